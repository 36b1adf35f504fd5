"""The storage contract for engine slots: a deployment's `concurrency` across processes. Run on every
adapter by the `storage` fixture."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from imagegen.ports import Storage
from tests.integration.builders import T0

LEASE = timedelta(seconds=60)


async def test_a_deployment_has_as_many_slots_as_its_limit_and_a_released_one_is_free(
    storage: Storage,
) -> None:
    assert await storage.take_slot("comfyui:aa", 2, "w-1/r-1", T0 + LEASE, T0)
    assert await storage.take_slot("comfyui:aa", 2, "w-2/r-2", T0 + LEASE, T0)
    assert not await storage.take_slot("comfyui:aa", 2, "w-3/r-3", T0 + LEASE, T0)
    assert await storage.take_slot("comfyui:bb", 1, "w-3/r-3", T0 + LEASE, T0)  # another deployment

    await storage.release_slot("comfyui:aa", "w-1/r-1")
    await storage.release_slot("comfyui:aa", "w-9/r-9")  # not a holder: changes nothing

    assert await storage.take_slot("comfyui:aa", 2, "w-3/r-3", T0 + LEASE, T0)
    assert not await storage.take_slot("comfyui:aa", 2, "w-4/r-4", T0 + LEASE, T0)


async def test_a_slot_whose_lease_ran_out_is_free_for_another_holder(storage: Storage) -> None:
    assert await storage.take_slot("openai:cc", 1, "w-dead/r-1", T0 + LEASE, T0)
    assert not await storage.take_slot("openai:cc", 1, "w-2/r-2", T0 + 2 * LEASE, T0 + LEASE / 2)

    assert await storage.take_slot("openai:cc", 1, "w-2/r-2", T0 + 2 * LEASE, T0 + LEASE)

    await storage.release_slot("openai:cc", "w-dead/r-1")  # the dead holder's late release: nothing
    assert not await storage.take_slot("openai:cc", 1, "w-3/r-3", T0 + 2 * LEASE, T0 + LEASE)


async def test_slots_taken_at_once_are_never_more_than_the_limit(storage: Storage) -> None:
    taken = await asyncio.gather(
        *(storage.take_slot("a1111:dd", 3, f"w-{n}/r-{n}", T0 + LEASE, T0) for n in range(10))
    )

    assert taken.count(True) == 3
