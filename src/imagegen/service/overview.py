"""The operator's overview: the last hour's generations, the queues, what is in flight.

Computed from existing reads: the reports' `group_counts` over twelve five-minute buckets (one
indexed range read each), and the pending and running requests as `list_requests` pages them. The
figures of the last hour count the requests *created* in it: their debits, and the refunds of the
ones among them that failed or were canceled (docs/console.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.reports import GroupCount
from imagegen.ports import Generations, Reports

BUCKET = timedelta(minutes=5)
BUCKETS = 12  # the last hour
QUEUE_SCAN = 1000  # pending or running requests counted at most (past it the counts say "at least")
PAGE = 200


@dataclass(frozen=True)
class Bucket:
    start: datetime
    created: int
    completed: int
    failed: int

    @property
    def per_minute(self) -> float:
        return self.created / (BUCKET.total_seconds() / 60)


@dataclass(frozen=True)
class ModelQueue:
    model: str
    pending: int
    running: int
    oldest_pending: datetime | None


@dataclass(frozen=True)
class Overview:
    now: datetime
    buckets: list[Bucket]
    by_status: dict[str, int]
    debited: int
    refunded: int
    queues: list[ModelQueue]
    queue_truncated: bool
    latest: list[GenerationRequest]

    @property
    def created(self) -> int:
        return sum(self.by_status.values())

    @property
    def in_flight(self) -> int:
        return sum(q.pending + q.running for q in self.queues)

    @property
    def failure_rate(self) -> float | None:
        """Failed among the finished ones (completed or failed); None with none finished."""
        failed, completed = self.by_status.get("failed", 0), self.by_status.get("completed", 0)
        return None if failed + completed == 0 else failed / (failed + completed)

    @property
    def per_minute(self) -> float:
        return self.created / (BUCKETS * BUCKET.total_seconds() / 60)


class OverviewStorage(Generations, Reports, Protocol):
    """The reads the overview is made of."""


async def overview(storage: OverviewStorage, now: datetime, *, latest: int = 10) -> Overview:
    start = now - BUCKETS * BUCKET
    buckets: list[Bucket] = []
    by_status: dict[str, int] = {}
    debited = refunded = 0
    for i in range(BUCKETS):
        bucket_start = start + i * BUCKET
        rows = await storage.group_counts(bucket_start, bucket_start + BUCKET)
        buckets.append(_bucket(bucket_start, rows))
        for row in rows:
            by_status[row.status] = by_status.get(row.status, 0) + row.count
            debited += row.cost
            if Status(row.status).refunded:
                refunded += row.cost
    queues, truncated = await _queues(storage)
    recent = (await storage.list_requests(None, None, latest, None)).items
    return Overview(now, buckets, by_status, debited, refunded, queues, truncated, recent)


def _bucket(start: datetime, rows: list[GroupCount]) -> Bucket:
    def count(status: str) -> int:
        return sum(row.count for row in rows if row.status == status)

    return Bucket(start, sum(row.count for row in rows), count("completed"), count("failed"))


async def _queues(storage: Generations) -> tuple[list[ModelQueue], bool]:
    pending: dict[str, list[datetime]] = {}
    running: dict[str, int] = {}
    truncated = False
    for status in (Status.PENDING, Status.RUNNING):
        seen, cursor = 0, None
        while True:
            page = await storage.list_requests(None, status, PAGE, cursor)
            for request in page.items:
                if status is Status.PENDING:
                    pending.setdefault(request.model, []).append(request.created_at)
                else:
                    running[request.model] = running.get(request.model, 0) + 1
            seen += len(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
            if seen >= QUEUE_SCAN:
                truncated = True
                break
    models = sorted(set(pending) | set(running))
    queues = [
        ModelQueue(m, len(pending.get(m, [])), running.get(m, 0), min(pending[m]) if m in pending else None)
        for m in models
    ]
    return queues, truncated
