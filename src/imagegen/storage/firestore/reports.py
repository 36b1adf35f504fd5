"""The aggregations a weekly report is made of, and the reports, on Firestore (no GROUP BY: the
period's requests are streamed, a few fields each, and counted here)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from imagegen.domain.generation import Status, valid_id
from imagegen.domain.paging import Page, after_time, time_cursor
from imagegen.domain.reports import GroupCount
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import translated
from imagegen.storage.firestore.parts import DESC, FirestoreParts, cond


class FirestoreReports(FirestoreParts):
    def _period(self, start: datetime, end: datetime) -> Any:
        return (
            self._requests()
            .where(filter=cond("createdAt", ">=", d.aware(start)))
            .where(filter=cond("createdAt", "<", d.aware(end)))
        )

    @translated
    def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]:
        """Firestore has no GROUP BY: streams the period's requests (six fields each) and counts here.

        Costs one document read per request in the period.
        """
        groups: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
        fields = ["model", "style", "color", "size", "status", "cost"]
        for snap in self._period(start, end).select(fields).stream():
            data = snap.to_dict() or {}
            group = groups[tuple(str(data[f]) for f in fields[:5])]
            group[0] += 1
            group[1] += int(data.get("cost") or 0)
        return [
            GroupCount(model, style, color, size, status, count, cost)
            for (model, style, color, size, status), (count, cost) in groups.items()
        ]

    @translated
    def unique_users(self, start: datetime, end: datetime) -> int:
        users = {
            (snap.to_dict() or {}).get("userId")
            for snap in self._period(start, end).select(["userId"]).stream()
        }
        return len(users)

    @translated
    def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None:
        start = datetime.fromisoformat(document["periodStart"])
        end = datetime.fromisoformat(document["periodEnd"])
        self.db.collection(d.REPORTS).document(report_id).set(d.report_doc(document, start, end, now))

    @translated
    def get_report(self, report_id: str) -> dict[str, Any] | None:
        if not valid_id(report_id):
            return None
        snap = self.db.collection(d.REPORTS).document(report_id).get()
        return d.report_from(snap.to_dict() or {}) if snap.exists else None

    @translated
    def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
        """Newest period first; the cursor is the last report's period start and id."""
        order = f"{d.REPORT_META}.periodStart"
        query = (
            self.db.collection(d.REPORTS).order_by(order, direction=DESC).order_by("__name__", direction=DESC)
        )
        if cursor is not None:
            at, last_id = after_time(cursor)
            query = query.start_after({order: at, "__name__": last_id})
        snaps = list(query.limit(limit + 1).stream())
        next_cursor = None
        if len(snaps) > limit:
            last = snaps[limit - 1]
            started = d.required_utc((last.to_dict() or {})[d.REPORT_META]["periodStart"])
            next_cursor = time_cursor(started, last.id)
        return Page([d.report_from(snap.to_dict() or {}) for snap in snaps[:limit]], next_cursor)

    @translated
    def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        query = self._period(start, end).where(filter=cond("status", "==", Status.COMPLETED.value))
        counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for snap in query.select(["model", "startedAt", "completedAt"]).stream():
            data = snap.to_dict() or {}
            started, completed = d.utc(data.get("startedAt")), d.utc(data.get("completedAt"))
            if started is None or completed is None:
                continue
            millis = (completed - started).total_seconds() * 1000
            counts[data["model"]][max(int(millis // bucket_ms), 0)] += 1
        return {model: sorted(buckets.items()) for model, buckets in counts.items()}

    @translated
    def earliest_request_at(self) -> datetime | None:
        query = self._requests().order_by("createdAt").select(["createdAt"]).limit(1)
        for snap in query.stream():
            return d.utc((snap.to_dict() or {}).get("createdAt"))
        return None
