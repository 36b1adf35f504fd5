"""Hand-built data for the storage contract tests: requests, jobs and ledgers, through the port only.

Everything here speaks the `Storage` port's words (awaited), so every adapter reuses it unchanged.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from imagegen.domain import reports
from imagegen.domain.generation import GenerationRequest, GenerationSpec, NewGeneration, Status
from imagegen.domain.ids import new_id
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.ports import Lease, Storage

T0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)  # a Monday morning in ISO week 2026-W47
LEASE = timedelta(seconds=30)
COSTS = {"512x512": 1, "1024x1024": 3, "1024x1792": 4}
BODY = {
    "userId": "testUser1",
    "model": "model-a",
    "style": "anime",
    "color": "vibrant",
    "size": "512x512",
    "prompt": "A cat sitting on a futuristic throne",
}


def new_generation(
    user_id: str = "testUser1",
    *,
    size: str = "512x512",
    created_at: datetime = T0,
    model: str = "model-a",
    style: str = "anime",
    color: str = "vibrant",
    key: str | None = None,
    fingerprint: str | None = None,
    cost: int | None = None,
) -> NewGeneration:
    spec = GenerationSpec(user_id, model, style, color, size, "a lighthouse at dawn")
    if key is not None and fingerprint is None:
        fingerprint = f"fp-{key}"
    return NewGeneration(
        id=new_id(),
        spec=spec,
        cost=COSTS[size] if cost is None else cost,
        created_at=created_at,
        idempotency_key=key,
        fingerprint=fingerprint,
    )


def lease(worker: str, now: datetime = T0) -> Lease:
    return Lease(worker, now + LEASE)


async def enqueue(storage: Storage, user_id: str = "testUser1", **kwargs: Any) -> GenerationRequest:
    request, created = await storage.debit_and_enqueue(new_generation(user_id, **kwargs))
    assert created
    return request


async def claim(storage: Storage, worker: str, now: datetime = T0) -> GenerationRequest:
    job = await storage.claim_job(lease(worker, now), now)
    assert job is not None, "expected a pending job to claim"
    return job


async def finished(storage: Storage, status: Status, at: datetime, **kwargs: Any) -> GenerationRequest:
    """A request created at `at` and driven to `status`. Call it only with no other job pending."""
    request = await enqueue(storage, created_at=at, **kwargs)
    if status is Status.PENDING:
        return request
    if status is Status.CANCELED:
        assert await storage.cancel_and_refund(request.id, at)
    else:
        job = await claim(storage, "w-builder", at)
        assert job.id == request.id
        if status is Status.COMPLETED:
            assert await storage.complete(job.id, "w-builder", f"/images/{job.id}.png", at)
        elif status is Status.FAILED:
            assert await storage.fail_and_refund(job.id, "model failed", at, worker_id="w-builder")
    got = await storage.get_request(request.id)
    assert got is not None and got.status is status
    return got


async def balance(storage: Storage, user_id: str) -> int:
    user = await storage.get_user(user_id)
    assert user is not None
    return user.credits


async def whole_ledger(storage: Storage, user_id: str, page_size: int = 100) -> list[LedgerEntry]:
    """Every entry of a user's ledger, newest first, walking the cursor pages."""
    entries: list[LedgerEntry] = []
    cursor: str | None = None
    while True:
        page = await storage.ledger(user_id, page_size, cursor)
        entries.extend(page.items)
        if page.next_cursor is None:
            return entries
        cursor = page.next_cursor


async def entries_for(storage: Storage, user_id: str, request_id: str) -> Counter[EntryType]:
    entries = await whole_ledger(storage, user_id)
    return Counter(e.type for e in entries if e.generation_request_id == request_id)


async def records_by_collection(storage: Storage) -> Counter[str]:
    return Counter([record["collection"] async for record in storage.export_records()])


async def exported(storage: Storage) -> list[dict[str, Any]]:
    return [record async for record in storage.export_records()]


W47 = reports.iso_week("2026-W47")  # [2026-11-16 00:00, 2026-11-23 00:00) UTC
TICK = timedelta(microseconds=1)


async def requests_around_week_47(storage: Storage) -> None:
    """Finished requests on both sides of week 47's edges: what a report of that week must count."""
    await finished(storage, Status.COMPLETED, W47.start - TICK)  # outside: just before the start
    await finished(storage, Status.COMPLETED, W47.start, size="1024x1024")
    await finished(storage, Status.FAILED, W47.start + timedelta(days=2), model="model-b")
    await finished(storage, Status.COMPLETED, W47.start + timedelta(days=3), user_id="testUser2")
    await finished(storage, Status.CANCELED, W47.start + timedelta(days=4), style="sketch")
    await finished(storage, Status.COMPLETED, W47.end, size="1024x1792")  # outside: the end is open
    await finished(storage, Status.PENDING, W47.end - TICK, color="neon")  # inside: the last instant
