"""The job lifecycle in SQL: claim the oldest pending request with a lease, keep the lease alive,
end the job (completed, or failed and refunded), hand a dead worker's job back.

Every ending is one conditional UPDATE on the request's current status and lease owner, in the
same transaction as its refund and webhook delivery: a duplicate or late call changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, func, or_, select, tuple_, update

from imagegen.domain.generation import GenerationRequest, Move, Status
from imagegen.domain.ledger import EntryType
from imagegen.domain.queues import QUEUED, ModelQueue, QueueCount, model_queues
from imagegen.ports import Lease
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.credits import add_credits, append_entry
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.outbox import enqueue_webhook
from imagegen.storage.sql.parts import SqlParts
from imagegen.storage.sql.rows import request_from

if TYPE_CHECKING:
    from imagegen.storage.sql.dialects import Dialect

gr = t.generation_requests


def claim_in_transaction(conn: Connection, params: dict[str, Any], now: datetime) -> GenerationRequest | None:
    row = conn.execute(sql.CLAIM_JOB["p_models" in params], params).first()
    if row is None:
        return None
    request = request_from(row)
    enqueue_webhook(conn, request, "start", now)
    return request


def complete_in_transaction(
    conn: Connection, dialect: Dialect, params: dict[str, Any], now: datetime
) -> bool:
    result = conn.execute(sql.COMPLETE_JOB, params).first()
    if result is None:
        return False
    conn.execute(sql.LEAVE_IN_FLIGHT, {"p_user": result.user_id})
    enqueue_webhook(conn, request_from(result), "completed", now)
    dialect.notify(conn, sql.DONE_CHANNEL, params["p_id"])
    return True


def finish_with_refund(
    conn: Connection, dialect: Dialect, move: Move, conditions: list[Any], error: str, now: datetime
) -> bool:
    """Ends the request matching `conditions` with `move` (failed or canceled), and its one refund."""
    row = conn.execute(
        update(gr)
        .where(sql.may(move), *conditions)
        .values(
            status=move.target.value, error=error, completed_at=now, lease_owner=None, lease_expires_at=None
        )
        .returning(*gr.c)
    ).first()
    if row is None:
        return False
    balance = add_credits(conn, row.user_id, row.cost, in_flight=-1)
    append_entry(conn, row.user_id, EntryType.REFUND, row.cost, balance, row.id, error, now)
    enqueue_webhook(conn, request_from(row), "completed", now)
    dialect.notify(conn, sql.DONE_CHANNEL, row.id)
    return True


class SqlJobs(SqlParts):
    @retrying
    def claim_job(
        self, lease: Lease, now: datetime, models: Collection[str] | None = None
    ) -> GenerationRequest | None:
        params: dict[str, Any] = {"p_worker": lease.worker_id, "p_lease_until": lease.until, "p_now": now}
        if models is not None:
            if not models:
                return None
            params["p_models"] = sorted(models)
        return self.dialect.claim_job(self.tx, params, now)

    @retrying
    def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int:
        if not leases:
            return 0
        held = tuple_(gr.c.id, gr.c.lease_owner).in_(list(leases.items()))
        with self.tx.write() as conn:
            result = conn.execute(
                update(gr)
                .where(held, sql.status_is(Status.RUNNING.value))
                .values(lease_expires_at=lease_until)
            )
            return result.rowcount

    @retrying
    def complete(self, request_id: str, worker_id: str, image_url: str, now: datetime) -> bool:
        params = {"p_id": request_id, "p_worker": worker_id, "p_image_url": image_url, "p_now": now}
        return self.dialect.complete(self.tx, params, now)

    @retrying
    def fail_and_refund(
        self,
        request_id: str,
        error: str,
        now: datetime,
        *,
        worker_id: str | None = None,
        lease_expired: bool = False,
    ) -> bool:
        conditions = [gr.c.id == request_id]
        if worker_id is not None:
            conditions.append(gr.c.lease_owner == worker_id)
        if lease_expired:
            conditions.append(gr.c.lease_expires_at < now)
        with self.tx.write() as conn:
            return finish_with_refund(conn, self.dialect, Move.FAIL, conditions, error, now)

    @retrying
    def expired_jobs(self, now: datetime) -> list[GenerationRequest]:
        query = (
            select(gr)
            .where(sql.status_is(Status.RUNNING.value), gr.c.lease_expires_at < now)
            .order_by(gr.c.lease_expires_at)
            .limit(100)
        )
        with self.tx.read() as conn:
            return [request_from(row) for row in conn.execute(query)]

    @retrying
    def requeue(self, request_id: str, now: datetime) -> bool:
        expired = and_(gr.c.id == request_id, sql.may(Move.REQUEUE), gr.c.lease_expires_at < now)
        with self.tx.write() as conn:
            result = conn.execute(
                update(gr)
                .where(expired)
                .values(status=Move.REQUEUE.target.value, lease_owner=None, lease_expires_at=None)
            )
            self.dialect.notify(conn, sql.JOBS_CHANNEL)
            return result.rowcount == 1

    @retrying
    def queues(self, now: datetime) -> list[ModelQueue]:
        query = (
            select(gr.c.model, gr.c.status, func.count(), func.min(gr.c.created_at))
            .where(or_(*(sql.status_is(status.value) for status in QUEUED)))
            .group_by(gr.c.model, gr.c.status)
        )
        with self.tx.read() as conn:
            rows = conn.execute(query).all()
        counts = [QueueCount(model, Status(status), n, _aware(oldest)) for model, status, n, oldest in rows]
        return model_queues(counts, now)


def _aware(value: Any) -> datetime | None:
    """min() over a UTCDateTime column comes back as the driver gives it (SQLite: a string)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return t.UTCDateTime().process_result_value(value, None)
