"""The storage contract for a running job's other ends: canceled while it runs (racing its worker's
complete or fail), and its progress. Run on every adapter by the `storage` fixture.

Money first: whatever wins a race, the request ends once, with one refund if it is failed or
canceled and none if it completed; the audit finds nothing.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.ports import Storage
from tests.integration.builders import T0, balance, claim, enqueue, entries_for

MINUTE = timedelta(minutes=1)


async def _ended_once(storage: Storage, request_id: str) -> Status:
    request = await storage.get_request(request_id)
    assert request is not None and request.status.terminal
    refunds = (await entries_for(storage, "testUser1", request_id))[EntryType.REFUND]
    assert refunds == (1 if request.status.refunded else 0), request.status
    return request.status


@pytest.mark.parametrize("end", ["complete", "fail"])
async def test_a_cancel_racing_the_workers_end_lets_exactly_one_win(storage: Storage, end: str) -> None:
    jobs = []
    for n in range(8):
        await enqueue(storage, created_at=T0 + n * MINUTE)
        jobs.append(await claim(storage, f"w-{n}"))

    async def worker(n: int) -> bool:
        if end == "complete":
            return await storage.complete(jobs[n].id, f"w-{n}", f"/images/{n}.png", T0 + MINUTE)
        return await storage.fail_and_refund(jobs[n].id, "engine failed", T0 + MINUTE, worker_id=f"w-{n}")

    async def user(n: int) -> bool:
        return await storage.cancel_and_refund(jobs[n].id, T0 + MINUTE)

    results = await asyncio.gather(*(f(n) for n in range(8) for f in (worker, user)))

    for n in range(8):
        ended_by_worker, canceled = results[2 * n], results[2 * n + 1]
        assert ended_by_worker != canceled  # exactly one of the two moves happened
        status = await _ended_once(storage, jobs[n].id)
        assert status is (
            Status.CANCELED if canceled else Status(Status.COMPLETED if end == "complete" else "failed")
        )
    canceled_count = sum(results[1::2])
    refunded = canceled_count if end == "complete" else 8
    assert await balance(storage, "testUser1") == 100 - 8 + refunded
    assert await storage.violations() == []


async def test_progress_is_noted_for_the_lease_owner_only_and_a_new_claim_clears_it(storage: Storage) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1")
    assert (await storage.get_request(job.id)).progress is None  # type: ignore[union-attr]

    assert await storage.set_progress(job.id, "w-1", 0.25)
    assert not await storage.set_progress(job.id, "w-2", 0.75)

    assert (await storage.get_request(job.id)).progress == 0.25  # type: ignore[union-attr]
    assert await storage.set_progress(job.id, "w-1", 1.5)  # kept within 0..1
    assert (await storage.get_request(job.id)).progress == 1.0  # type: ignore[union-attr]
    later = T0 + 10 * MINUTE
    assert await storage.requeue(job.id, later)  # its worker died: another attempt starts from nothing
    again = await claim(storage, "w-2", later)
    assert again.id == job.id and again.progress is None
    assert await storage.complete(job.id, "w-2", "/images/x.png", later)
    assert not await storage.set_progress(job.id, "w-2", 0.5)  # ended: nothing to note
    assert await storage.violations() == []
