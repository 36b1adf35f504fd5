"""Creating generation requests (debit and enqueue in one transaction), reading them, canceling.

Creates are group-committed: `Debit` is one create as a call that runs in a batch's transaction:
on SQLite in the event loop's batch (group_commit.py), on PostgreSQL sent by the event loop itself as
one row of a batch statement (loop_pipeline.py), or on the writer thread, pipelined with the batch's
other creates, when it must run whole (an Idempotency-Key, a claimed create, a refused debit).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select
from sqlalchemy.exc import IntegrityError

from imagegen.domain.errors import IdempotencyConflict, StaleConfig
from imagegen.domain.generation import GenerationRequest, Move, NewGeneration, Status
from imagegen.domain.paging import Page, after_time, time_cursor
from imagegen.ports import Lease
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.calls import BEFORE_COMMIT, HAND_OVER, Batch, HandOver, LoopStatement
from imagegen.storage.sql.dialects import Dialect, debit_alone, debit_row, debited
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.jobs import finish_with_refund
from imagegen.storage.sql.outbox import enqueue_webhook
from imagegen.storage.sql.parts import SqlParts
from imagegen.storage.sql.rows import request_from, request_values

gr = t.generation_requests


class SqlGenerations(SqlParts):
    def debit_on_loop(
        self, new: NewGeneration, config_version: str | None = None, claim: Lease | None = None
    ) -> Awaitable[tuple[GenerationRequest, bool]]:
        """Queues the debit from the running event loop; the awaitable resolves once it is committed
        (see GroupCommit.submit_from_loop: the loop's own batch on SQLite, its pipeline on PostgreSQL).

        With `config_version` (from `config_snapshot`), the debit refuses with StaleConfig if the
        catalog or the keys have changed since: the caller's cached price and key are then redone.
        With `claim`, the request is inserted already running under that lease.
        """
        debit = Debit(new, config_version, self.dialect, claim)
        return self.writes.submit_from_loop(debit, order=new.spec.user_id)

    @retrying
    def get_request(self, request_id: str) -> GenerationRequest | None:
        with self.tx.statement() as conn:
            row = conn.execute(sql.GET_REQUEST, {"p_id": request_id}).first()
        return None if row is None else request_from(row)

    @retrying
    def list_requests(
        self, user_id: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> Page[GenerationRequest]:
        query = select(gr)
        if user_id is not None:
            query = query.where(gr.c.user_id == user_id)
        if status is not None:
            query = query.where(gr.c.status == status.value)
        if cursor is not None:
            at, last_id = after_time(cursor)
            query = query.where((gr.c.created_at < at) | ((gr.c.created_at == at) & (gr.c.id < last_id)))
        query = query.order_by(gr.c.created_at.desc(), gr.c.id.desc()).limit(limit + 1)
        with self.tx.read() as conn:
            rows = conn.execute(query).all()
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = time_cursor(last.created_at, last.id)
        return Page([request_from(row) for row in rows[:limit]], next_cursor)

    @retrying
    def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        with self.tx.write() as conn:
            return finish_with_refund(
                conn, self.dialect, Move.CANCEL, [gr.c.id == request_id], "canceled", now
            )


@dataclass(frozen=True)
class Debit:
    """Debits and queues one create (or finds its Idempotency-Key's request), in a batch's transaction.

    On PostgreSQL a batch of creates without Idempotency-Key is pipelined (see group_commit.Pipelined):
    the configuration version, every debit and the NOTIFY go out together, and the results are read
    after one round trip.
    """

    new: NewGeneration
    config_version: str | None
    dialect: Dialect
    claim: Lease | None = None

    def __call__(self, conn: Connection, batch: Batch) -> tuple[GenerationRequest, bool]:
        self._check_config(conn, batch)
        if self.claim is None:  # a claimed job is its creator's: no worker needs waking
            self._notify_jobs_at_commit(batch)
        if self.new.idempotency_key is None:
            return self._claimed(conn, *self._debit_once(conn))
        try:
            with conn.begin_nested():
                return self._claimed(conn, *self._debit_once(conn))
        except IntegrityError:
            # A duplicate with the same Idempotency-Key, in another process, committed first: replay it.
            return self._debit_once(conn)

    def _claimed(
        self, conn: Connection, request: GenerationRequest, fresh: bool
    ) -> tuple[GenerationRequest, bool]:
        """The new request started under the claim's lease, in the debit's transaction (a replayed
        one is left as it is: whoever created it runs it)."""
        if self.claim is None or not fresh:
            return request, fresh
        params = {"p_id": request.id, "p_worker": self.claim.worker_id, "p_lease_until": self.claim.until}
        row = conn.execute(sql.CLAIM_CREATED, {**params, "p_now": self.new.created_at}).one()
        started = request_from(row)
        enqueue_webhook(conn, started, "start", self.new.created_at)
        return started, True

    def send(self, conn: Connection, batch: Batch) -> Any:
        if self.config_version is not None and "config_sent" not in batch:
            batch["config_sent"] = sql.CONFIG_VERSION_FAST.execute(conn, {})
        self._notify_jobs_at_commit(batch)
        values = request_values(self.new)
        return values, debit_alone(conn, self.new, values)

    def receive(self, conn: Connection, batch: Batch, sent: Any) -> tuple[GenerationRequest, bool]:
        values, debited_rows = sent
        self._check_config(conn, batch)  # the debit was written: StaleConfig undoes the batch
        return debited(conn, self.new, values, debited_rows)

    @property
    def pipelines(self) -> bool:
        return self.new.idempotency_key is None and self.claim is None

    def on_loop(self) -> LoopStatement[tuple[GenerationRequest, bool]]:
        """The debit as one row of a statement the event loop runs for a batch (see LoopPipeline):
        the statement checks the configuration version and wakes the workers itself."""
        values = request_values(self.new)

        def answer(applied: bool) -> tuple[GenerationRequest, bool] | HandOver:
            # Not applied: the debit moved nothing (short of credits, at the in-flight limit, or
            # priced with a stale configuration). The writer thread runs it again, to say why.
            return (self.new.queued(), True) if applied else HAND_OVER

        row = debit_row(self.new, values, self.config_version)
        return LoopStatement(sql.DEBIT_ROWS, row, self.new.spec.user_id, answer)

    def _debit_once(self, conn: Connection) -> tuple[GenerationRequest, bool]:
        new = self.new
        if new.idempotency_key is not None:
            # Lock the user first: a concurrent duplicate then waits here and, once the first
            # commits, finds its request (rather than a balance it has already spent).
            conn.execute(sql.LOCK_USER, {"p_user": new.spec.user_id})
            existing = _by_idempotency_key(conn, new.spec.user_id, new.idempotency_key)
            if existing is not None:
                if existing.fingerprint != new.fingerprint:
                    raise IdempotencyConflict(
                        "Idempotency-Key was already used with a different request body",
                        idempotencyKey=new.idempotency_key,
                    )
                return request_from(existing), False
        return self.dialect.debit(conn, new, request_values(new))

    def _check_config(self, conn: Connection, batch: Batch) -> None:
        if self.config_version is None:
            return
        if "config_version" not in batch:  # read once per transaction: no writer changes it meanwhile
            cursor = batch.pop("config_sent", None) or sql.CONFIG_VERSION_FAST.execute(conn, {})
            row = cursor.fetchone()
            batch["config_version"] = (row[0] if row else None) or ""
        if batch["config_version"] != self.config_version:
            raise StaleConfig

    def _notify_jobs_at_commit(self, batch: Batch) -> None:
        # One NOTIFY for the whole batch wakes the workers of every process.
        batch.setdefault(BEFORE_COMMIT, {})["notify jobs"] = self._notify_jobs

    def _notify_jobs(self, conn: Connection) -> None:
        self.dialect.notify(conn, sql.JOBS_CHANNEL)


def _by_idempotency_key(conn: Connection, user_id: str, key: str) -> Row[Any] | None:
    return conn.execute(sql.BY_IDEMPOTENCY_KEY, {"p_user": user_id, "p_key": key}).first()
