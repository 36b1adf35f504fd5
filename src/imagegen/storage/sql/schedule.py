"""Scheduled runs: each scheduled period is claimed once, by one process, and marked finished."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from imagegen.storage.sql import tables as t
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.parts import SqlParts

runs = t.scheduled_runs


class SqlSchedule(SqlParts):
    @retrying
    def claim_scheduled_run(self, period_id: str, owner: str, now: datetime, stale_before: datetime) -> bool:
        try:
            with self.tx.write() as conn:
                row = conn.execute(select(runs).where(runs.c.period_id == period_id)).first()
                if row is None:
                    conn.execute(insert(runs).values(period_id=period_id, claimed_by=owner, claimed_at=now))
                    return True
                if row.finished_at is not None or row.claimed_at >= stale_before:
                    return False
                # The process that claimed it died before finishing: take it over.
                taken = conn.execute(
                    update(runs)
                    .where(
                        runs.c.period_id == period_id,
                        runs.c.finished_at.is_(None),
                        runs.c.claimed_at < stale_before,
                    )
                    .values(claimed_by=owner, claimed_at=now)
                )
                return taken.rowcount == 1
        except IntegrityError:
            return False  # another process inserted the claim first

    @retrying
    def finish_scheduled_run(self, period_id: str, now: datetime) -> None:
        with self.tx.write() as conn:
            conn.execute(update(runs).where(runs.c.period_id == period_id).values(finished_at=now))

    @retrying
    def last_scheduled_run(self) -> str | None:
        query = (
            select(runs.c.period_id).where(runs.c.finished_at.is_not(None)).order_by(runs.c.period_id.desc())
        )
        with self.tx.read() as conn:
            return conn.execute(query.limit(1)).scalar_one_or_none()
