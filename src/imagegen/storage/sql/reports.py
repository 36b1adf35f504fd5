"""What reports read: counts grouped in the database, and the stored reports themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select

from imagegen.domain.generation import Status
from imagegen.domain.paging import Page, after_time, time_cursor
from imagegen.domain.reports import GroupCount
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.parts import SqlParts

gr = t.generation_requests
DIMENSIONS = (gr.c.model, gr.c.style, gr.c.color, gr.c.size, gr.c.status)


class SqlReports(SqlParts):
    @retrying
    def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]:
        query = (
            select(*DIMENSIONS, func.count(), func.coalesce(func.sum(gr.c.cost), 0))
            .where(gr.c.created_at >= start, gr.c.created_at < end)
            .group_by(*DIMENSIONS)
        )
        with self.tx.read() as conn:
            return [GroupCount(*row) for row in conn.execute(query)]

    @retrying
    def unique_users(self, start: datetime, end: datetime) -> int:
        query = select(func.count(func.distinct(gr.c.user_id))).where(
            gr.c.created_at >= start, gr.c.created_at < end
        )
        with self.tx.read() as conn:
            return int(conn.execute(query).scalar_one())

    @retrying
    def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        bucket = self.dialect.bucket_of(gr.c.started_at, gr.c.completed_at, bucket_ms)
        query = (
            select(gr.c.model, bucket.label("bucket"), func.count())
            .where(
                gr.c.created_at >= start,
                gr.c.created_at < end,
                gr.c.status == Status.COMPLETED.value,
                gr.c.started_at.is_not(None),
            )
            .group_by(gr.c.model, bucket)
        )
        histograms: dict[str, list[tuple[int, int]]] = {}
        with self.tx.read() as conn:
            for model, slot, count in conn.execute(query):
                histograms.setdefault(model, []).append((max(int(slot), 0), int(count)))
        return histograms

    @retrying
    def earliest_request_at(self) -> datetime | None:
        with self.tx.read() as conn:
            return conn.execute(select(func.min(gr.c.created_at))).scalar_one_or_none()

    @retrying
    def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None:
        start = datetime.fromisoformat(document["periodStart"])
        end = datetime.fromisoformat(document["periodEnd"])
        with self.tx.write() as conn:
            conn.execute(delete(t.reports).where(t.reports.c.id == report_id))
            conn.execute(
                insert(t.reports).values(
                    id=report_id, period_start=start, period_end=end, document=document, generated_at=now
                )
            )

    @retrying
    def get_report(self, report_id: str) -> dict[str, Any] | None:
        with self.tx.read() as conn:
            row = conn.execute(select(t.reports.c.document).where(t.reports.c.id == report_id)).first()
        return None if row is None else dict(row.document)

    @retrying
    def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
        """Newest period first; the cursor is the last report's period start and id."""
        rep = t.reports
        query = select(rep.c.id, rep.c.period_start, rep.c.document)
        if cursor is not None:
            at, last_id = after_time(cursor)
            query = query.where(
                (rep.c.period_start < at) | ((rep.c.period_start == at) & (rep.c.id < last_id))
            )
        query = query.order_by(rep.c.period_start.desc(), rep.c.id.desc()).limit(limit + 1)
        with self.tx.read() as conn:
            rows = conn.execute(query).all()
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = time_cursor(last.period_start, last.id)
        return Page([dict(row.document) for row in rows[:limit]], next_cursor)
