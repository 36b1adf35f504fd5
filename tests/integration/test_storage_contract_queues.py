"""The storage contract, the queue per model: what `Jobs.queues` counts and what a claim narrowed to
some models takes. Run on every adapter by the `storage` fixture, as test_storage_contract.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from imagegen.domain.generation import Status
from imagegen.domain.queues import ModelQueue
from imagegen.ports import Lease, Storage
from tests.integration.builders import LEASE, T0, balance, claim, enqueue, finished

MINUTE = timedelta(minutes=1)


async def test_an_empty_queue_has_no_model(storage: Storage) -> None:
    assert await storage.queues(T0) == []


async def test_queues_count_pending_and_running_jobs_per_model_with_the_oldest_pending(
    storage: Storage,
) -> None:
    for status in (Status.COMPLETED, Status.FAILED, Status.CANCELED):  # ended: not in the queue
        await finished(storage, status, T0 - MINUTE, model="model-b")
    running = await enqueue(storage, created_at=T0, model="model-a")
    assert (await claim(storage, "w-1", T0)).id == running.id
    await enqueue(storage, created_at=T0 + 2 * MINUTE, model="model-a")
    await enqueue(storage, created_at=T0 + MINUTE, model="model-a")
    await enqueue(storage, created_at=T0 + 3 * MINUTE, model="model-b")

    queues = await storage.queues(T0 + 10 * MINUTE)

    assert queues == [
        ModelQueue("model-a", 2, 1, T0 + MINUTE, 9 * 60.0),
        ModelQueue("model-b", 1, 0, T0 + 3 * MINUTE, 7 * 60.0),
    ]


async def test_a_model_with_only_running_jobs_has_no_oldest_pending(storage: Storage) -> None:
    await enqueue(storage, model="model-b")
    await claim(storage, "w-1")

    assert await storage.queues(T0 + MINUTE) == [ModelQueue("model-b", 0, 1, None, None)]


async def test_a_claim_for_some_models_takes_the_oldest_of_theirs_and_leaves_the_rest(
    storage: Storage,
) -> None:
    other = await enqueue(storage, created_at=T0, model="model-b")
    mine = await enqueue(storage, created_at=T0 + MINUTE, model="model-a")

    job = await storage.claim_job(Lease("w-a", T0 + LEASE), T0, models=["model-a"])

    assert job is not None and job.id == mine.id
    assert await storage.claim_job(Lease("w-a", T0 + LEASE), T0, models=["model-a"]) is None
    assert await storage.claim_job(Lease("w-x", T0 + LEASE), T0, models=["model-x"]) is None
    assert await storage.claim_job(Lease("w-0", T0 + LEASE), T0, models=[]) is None
    # Nobody serving model-b: its job waits, and the queue read shows it waiting.
    assert (await storage.get_request(other.id)).status is Status.PENDING  # type: ignore[union-attr]
    [a, b] = await storage.queues(T0 + MINUTE)
    assert (a.model, a.pending, a.running) == ("model-a", 0, 1)
    assert (b.model, b.pending, b.running, b.oldest_pending_at) == ("model-b", 1, 0, T0)
    anyone = await storage.claim_job(Lease("w-all", T0 + LEASE), T0, models=["model-a", "model-b"])
    assert anyone is not None and anyone.id == other.id


async def test_claims_at_once_for_two_models_take_each_job_once_and_only_their_models(
    storage: Storage,
) -> None:
    jobs = {}
    for n in range(6):
        model = "model-a" if n % 2 else "model-b"
        jobs[(await enqueue(storage, created_at=T0 + n * MINUTE, model=model)).id] = model

    claims = [
        storage.claim_job(Lease(f"w-{n}", T0 + LEASE), T0, models=["model-a" if n % 2 else "model-b"])
        for n in range(10)
    ]
    claimed = await asyncio.gather(*claims)

    taken = [(n, job) for n, job in enumerate(claimed) if job is not None]
    assert sorted(job.id for _, job in taken) == sorted(jobs)
    for n, job in taken:
        assert job.model == ("model-a" if n % 2 else "model-b")
        assert await storage.complete(job.id, f"w-{n}", "/images/x.png", T0 + MINUTE)
    assert await storage.queues(T0 + MINUTE) == []
    assert await balance(storage, "testUser1") == 94
    assert await storage.violations() == []
