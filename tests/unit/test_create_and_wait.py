"""THE create use case over a configuration that changes under it, and the wait for a job's end,
on the in-memory storage."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from imagegen import service
from imagegen.background.completions import Completions
from imagegen.domain.errors import Unauthenticated
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.ports import Lease
from imagegen.service.config_cache import ConfigCache
from imagegen.storage.memory import MemoryStorage
from tests.integration.builders import BODY, LEASE, T0


@pytest.fixture
async def storage() -> MemoryStorage:
    storage = MemoryStorage()
    assert await service.first_start(storage, T0) is not None
    return storage


async def create(storage: MemoryStorage, **options: Any) -> tuple[GenerationRequest, bool]:
    body = options.pop("body", BODY)
    return await service.create_generation(
        storage, body, service.CreateRules(max_prompt_length=100), now=T0, **options
    )


async def credits(storage: MemoryStorage, user_id: str = "testUser1") -> int:
    user = await storage.get_user(user_id)
    assert user is not None
    return user.credits


# -- the configuration changing under a create ---------------------------------------------------
async def test_a_price_changed_since_the_cache_was_read_is_charged_at_the_new_price(
    storage: MemoryStorage,
) -> None:
    cache = ConfigCache(storage)
    await cache.refresh()
    await service.set_option(storage, "sizes", "512x512", enabled=True, cost=7)

    request, fresh = await create(storage, config=cache)

    assert fresh and request.cost == 7
    assert await credits(storage) == 93
    assert cache.snapshot() == await storage.config_snapshot()


async def test_an_option_enabled_since_the_cache_was_read_can_be_ordered_at_once(
    storage: MemoryStorage,
) -> None:
    cache = ConfigCache(storage)
    await cache.refresh()
    await service.set_option(storage, "styles", "pop art", enabled=True, cost=None)

    request, _ = await create(storage, config=cache, body={**BODY, "style": "pop art"})

    assert request.style == "pop art"


async def test_a_key_revoked_since_it_was_cached_is_refused_and_nothing_is_debited(
    storage: MemoryStorage,
) -> None:
    cache = ConfigCache(storage)
    issued = await service.issue_key(storage, "testUser1", T0)
    key_id, key = issued.id, issued.key
    key_hash = service.hash_key(key)
    assert await cache.principal_key(key_hash) is not None
    assert await storage.revoke_api_key(key_id, T0)
    assert cache.key(key_hash) is not None  # this process has not heard of the revocation

    with pytest.raises(Unauthenticated):
        await create(storage, config=cache, key_hash=key_hash)

    assert await credits(storage) == 100
    assert cache.key(key_hash) is None


async def test_a_cache_kept_across_creates_reads_the_catalog_once(storage: MemoryStorage) -> None:
    cache = ConfigCache(storage)
    first, _ = await create(storage, config=cache)
    snapshot = cache.snapshot()

    second, _ = await create(storage, config=cache)

    assert cache.snapshot() is snapshot
    assert first.id != second.id


# -- claim= (what a Cloud Function creates) --------------------------------------------------------
async def test_a_create_with_a_claim_is_running_under_that_lease_and_cannot_be_claimed_again(
    storage: MemoryStorage,
) -> None:
    request, fresh = await create(storage, claim=Lease("functions-1", T0 + LEASE))

    assert fresh and request.status is Status.RUNNING
    assert await storage.claim_job(Lease("worker-2", T0 + LEASE), T0) is None
    assert await storage.complete(request.id, "functions-1", "/images/x.png", T0)


# -- waiting for the end ----------------------------------------------------------------------------
async def test_a_waiter_returns_as_soon_as_its_job_is_reported_done(storage: MemoryStorage) -> None:
    request, _ = await create(storage)
    completions = Completions()

    async def worker() -> None:
        job = await storage.claim_job(Lease("w-1", T0 + LEASE), T0)
        assert job is not None
        await storage.complete(job.id, "w-1", f"/images/{job.id}.png", T0)
        completions.finished(job.id)

    asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(worker()))
    started = time.monotonic()
    done = await service.wait_until_done(storage, request, 5, recheck=30, completions=completions)

    assert done.status is Status.COMPLETED and done.image_url == f"/images/{request.id}.png"
    assert time.monotonic() - started < 2  # woken, not the 30 s re-read


async def test_a_job_finished_where_nobody_reports_it_is_found_by_the_timed_re_read(
    storage: MemoryStorage,
) -> None:
    request, _ = await create(storage)
    job = await storage.claim_job(Lease("w-1", T0 + LEASE), T0)
    assert job is not None
    await storage.fail_and_refund(job.id, "model failed", T0, worker_id="w-1")

    done = await service.wait_until_done(storage, request, 5, recheck=0.05, completions=Completions())

    assert (done.status, done.error) == (Status.FAILED, "model failed")


async def test_a_wait_that_runs_out_answers_the_request_as_it_stands(storage: MemoryStorage) -> None:
    request, _ = await create(storage)

    started = time.monotonic()
    current = await service.wait_until_done(storage, request, 0.2, recheck=0.05)

    assert current.status is Status.PENDING
    assert 0.15 < time.monotonic() - started < 2


async def test_a_waiter_without_workers_runs_the_queued_jobs_itself(storage: MemoryStorage) -> None:
    older, _ = await create(storage)
    mine, _ = await create(storage, body={**BODY, "size": "1024x1024"})
    ran: list[str] = []

    async def run_one() -> bool:
        job = await storage.claim_job(Lease("fn-1", T0 + LEASE), T0)
        if job is None:
            return False
        ran.append(job.id)
        return await storage.complete(job.id, "fn-1", f"/images/{job.id}.png", T0)

    done = await service.wait_until_done(storage, mine, 5, recheck=0.05, while_waiting=run_one)

    assert done.status is Status.COMPLETED
    assert ran == [older.id, mine.id]  # oldest first: the older one's own waiter then finds it done
