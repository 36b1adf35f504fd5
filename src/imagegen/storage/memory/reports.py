"""What reports read in memory: counts and times grouped over the requests of a period, and the
stored reports themselves (kept as deep copies, so no caller can change one in place).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.paging import Page, after_time, time_cursor
from imagegen.domain.reports import GroupCount
from imagegen.storage.memory.parts import MemoryParts
from imagegen.storage.memory.state import ReportRow


class MemoryReports(MemoryParts):
    async def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]:
        groups: dict[tuple[str, str, str, str, str], list[int]] = {}
        for request in self._requests_between(start, end):
            dims = (request.model, request.style, request.color, request.size, request.status.value)
            counted = groups.setdefault(dims, [0, 0])
            counted[0] += 1
            counted[1] += request.cost
        return [GroupCount(*dims, count, cost) for dims, (count, cost) in groups.items()]

    async def unique_users(self, start: datetime, end: datetime) -> int:
        return len({request.user_id for request in self._requests_between(start, end)})

    async def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None:
        start = datetime.fromisoformat(document["periodStart"])
        end = datetime.fromisoformat(document["periodEnd"])
        with self._lock:
            self._state.reports[report_id] = ReportRow(copy.deepcopy(document), start, end)

    async def get_report(self, report_id: str) -> dict[str, Any] | None:
        with self._lock:
            stored = self._state.reports.get(report_id)
            return None if stored is None else copy.deepcopy(stored.document)

    async def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
        after = after_time(cursor) if cursor is not None else None
        with self._lock:
            ordered = sorted(
                (
                    (stored.period_start, report_id, stored)
                    for report_id, stored in self._state.reports.items()
                ),
                key=lambda item: (item[0], item[1]),
                reverse=True,
            )
        if after is not None:
            ordered = [item for item in ordered if (item[0], item[1]) < after]
        page = ordered[:limit]
        next_cursor = time_cursor(page[-1][0], page[-1][1]) if len(ordered) > limit else None
        return Page([copy.deepcopy(stored.document) for _, _, stored in page], next_cursor)

    async def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        counts: dict[str, dict[int, int]] = {}
        for request in self._requests_between(start, end):
            if request.status is not Status.COMPLETED or request.started_at is None:
                continue
            if request.completed_at is None:
                continue
            millis = (request.completed_at - request.started_at).total_seconds() * 1000
            bucket = max(int(millis // bucket_ms), 0)
            by_bucket = counts.setdefault(request.model, {})
            by_bucket[bucket] = by_bucket.get(bucket, 0) + 1
        return {model: sorted(buckets.items()) for model, buckets in counts.items()}

    async def earliest_request_at(self) -> datetime | None:
        with self._lock:
            return min((s.request.created_at for s in self._state.requests.values()), default=None)

    def _requests_between(self, start: datetime, end: datetime) -> list[GenerationRequest]:
        """The requests created in [start, end), taken under the lock (the grouping runs after it)."""
        with self._lock:
            return [s.request for s in self._state.requests.values() if start <= s.request.created_at < end]
