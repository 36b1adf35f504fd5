"""The per-user in-flight limit, on every storage backend: queued + running, never more."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

import pytest

from imagegen.clock import utcnow
from imagegen.domain.errors import InsufficientCredits, TooManyRequests
from imagegen.ports import Storage
from imagegen.storage.firestore.adapter import FirestoreStorage
from tests.integration.builders import lease, new_generation


async def create(storage: Storage, limit: int, user_id: str = "testUser1") -> str:
    new = replace(new_generation(user_id, created_at=utcnow()), max_in_flight=limit)
    request, _ = await storage.debit_and_enqueue(new)
    return request.id


async def test_the_in_flight_limit_refuses_without_debiting_and_frees_a_place_when_a_request_ends(
    storage: Storage,
) -> None:
    ids = [await create(storage, limit=3) for _ in range(3)]
    with pytest.raises(TooManyRequests):
        await create(storage, limit=3)
    assert (await storage.get_user("testUser1")).credits == 97  # type: ignore[union-attr]

    now = utcnow()
    job = await storage.claim_job(lease("w", now), now)
    assert job is not None
    assert await storage.complete(job.id, "w", "/images/x.png", now)  # completed: no longer in flight
    await create(storage, limit=3)
    with pytest.raises(TooManyRequests):
        await create(storage, limit=3)

    assert await storage.cancel_and_refund(ids[1], now)  # canceled: no longer in flight
    job = await storage.claim_job(lease("w", now), now)
    assert job is not None
    assert await storage.fail_and_refund(job.id, "boom", now, worker_id="w")  # failed: no longer in flight
    await create(storage, limit=3)
    await create(storage, limit=3)
    with pytest.raises(TooManyRequests):
        await create(storage, limit=3)
    assert await storage.violations() == []


async def test_a_create_refused_at_the_in_flight_limit_is_a_429_even_while_jobs_end_around_it(
    storage: Storage,
) -> None:
    """Creates at the limit race workers that end jobs: a refusal is a 429 whenever the limit is its
    reason, never "insufficient credits" for a user with plenty (the reason is judged on the row
    the refused debit saw, not on one read after a job freed a place)."""
    emulated = isinstance(storage, FirestoreStorage)  # the emulator: tens of ms a transaction
    attempts = 16 if emulated else 600
    await storage.create_user("racer", 1_000_000, utcnow())
    outcomes: Counter[str] = Counter()
    done = asyncio.Event()

    async def creating() -> None:
        for _ in range(attempts // 2):
            try:
                await create(storage, limit=2, user_id="racer")
                outcomes["created"] += 1
            except TooManyRequests:
                outcomes["429"] += 1
            except InsufficientCredits:
                outcomes["402"] += 1

    async def ending() -> None:
        while not done.is_set():
            now = utcnow()
            job = await storage.claim_job(lease("w", now), now)
            if job is not None:
                await storage.complete(job.id, "w", "/images/x.png", now)
            else:
                await asyncio.sleep(0.01 if emulated else 0)

    enders = [asyncio.create_task(ending()) for _ in range(1 if emulated else 2)]
    await asyncio.gather(creating(), creating())
    done.set()
    await asyncio.gather(*enders)
    assert outcomes["402"] == 0, outcomes
    assert outcomes["created"] > 0 and outcomes["created"] + outcomes["429"] == attempts
    assert await storage.violations() == []
