"""The SQL storage adapter: every port method is one transaction on SQLite or PostgreSQL.

Credit moves are single conditional UPDATEs (`credits = credits - cost WHERE credits >= cost`), so no
interleaving of clients can overdraw a balance; the unique index on (request, entry type) makes a
second deduction or refund for one request impossible even if a bug tried.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Integer,
    Row,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.generation import GenerationRequest, Status, to_resource, valid_id
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.domain.reports import GroupCount
from imagegen.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    StaleConfig,
    TooManyRequests,
    UserExists,
    UserNotFound,
)
from imagegen.ids import new_id
from imagegen.ports import (
    NO_FILTER,
    ApiKey,
    Idempotency,
    LedgerFilter,
    NewGeneration,
    Page,
    StoredResponse,
    User,
    Violation,
    WebhookDelivery,
)
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.engine import (
    BEFORE_COMMIT,
    Batch,
    GroupCommit,
    Transactions,
    create_sql_engine,
    retrying,
)
from imagegen.storage.sql.loop_pipeline import HAND_OVER, HandOver, LoopStatement
from imagegen.storage.sql.transfer import export_records, import_records

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("imagegen.storage")
NO_LIMIT = 2**31 - 1  # an in-flight limit that never binds (the column is a 32-bit integer)
INITIAL_DATA_MARKER = "initial_data_loaded"
gr = t.generation_requests


class SqlStorage:
    def __init__(self, url: str) -> None:
        self.engine = create_sql_engine(url)
        self.tx = Transactions(self.engine)
        self.writes = GroupCommit(self.tx)

    # -- lifecycle --------------------------------------------------------------------------
    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.tx.write() as conn:
            if self.tx.dialect == "postgresql":
                # Several processes may start at once: one migrates, the others wait for it.
                conn.execute(text("SELECT pg_advisory_xact_lock(7236451)"))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @retrying
    def load_initial_data(
        self,
        catalog: Catalog,
        users: dict[str, int],
        keys: list[tuple[str, str, str | None]],
        now: datetime,
    ) -> bool:
        with self.tx.write() as conn:
            marker = conn.execute(select(t.meta.c.value).where(t.meta.c.key == INITIAL_DATA_MARKER))
            if marker.first() is not None:
                return False
            _insert_catalog(conn, catalog)
            for user_id, credits in users.items():
                # A fixed id: every instance's initial grant is the same entry, so an export of one
                # instance imported into another (which has its own initial data) adds it only once.
                _insert_user(
                    conn, user_id, credits, now, reason="initial data", entry_id=f"initial-{user_id}"
                )
            for key_id, key_hash, key_user in keys:
                conn.execute(
                    insert(t.api_keys).values(id=key_id, key_hash=key_hash, user_id=key_user, created_at=now)
                )
            conn.execute(insert(t.meta).values(key=INITIAL_DATA_MARKER, value=now.isoformat()))
            return True

    @retrying
    def ping(self) -> None:
        with self.tx.read() as conn:
            conn.execute(sql.ONE)

    @property
    def reads_on_loop(self) -> bool:
        return self.tx.reads_on_loop

    def reading_on_loop(self) -> AbstractContextManager[None]:
        return self.tx.reading_on_loop()

    def close(self) -> None:
        self.writes.close()
        self.tx.close()
        self.engine.dispose()

    # -- catalog ----------------------------------------------------------------------------
    @retrying
    def catalog(self) -> Catalog:
        with self.tx.read() as conn:
            return _catalog(conn)

    @retrying
    def model_settings(self, name: str) -> ModelSettings | None:
        with self.tx.statement() as conn:
            row = conn.execute(sql.MODELS.where(t.models.c.name == name)).first()
        return None if row is None else _model(row)

    @retrying
    def config_version(self) -> str:
        with self.tx.read() as conn:
            return conn.execute(sql.CONFIG_VERSION).scalar() or ""

    @retrying
    def config_snapshot(self) -> tuple[str, Catalog]:
        with self.tx.read() as conn:
            # The version first: a catalog newer than its version only costs a refresh, the reverse
            # would price with an old catalog under a new version.
            version = conn.execute(sql.CONFIG_VERSION).scalar() or ""
            return version, _catalog(conn)

    @retrying
    def put_model(self, model: ModelSettings) -> None:
        values = {
            "failure_rate": model.failure_rate,
            "latency_ms": model.latency_ms,
            "enabled": model.enabled,
        }
        with self.tx.write() as conn:
            changed = conn.execute(update(t.models).where(t.models.c.name == model.name).values(values))
            if changed.rowcount == 0:
                conn.execute(insert(t.models).values(name=model.name, **values))
            _bump_config_version(conn)

    @retrying
    def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None:
        table = {"styles": t.styles, "colors": t.colors, "sizes": t.sizes}[kind]
        values: dict[str, Any] = {"enabled": enabled}
        if cost is not None:
            values["cost"] = cost
        with self.tx.write() as conn:
            changed = conn.execute(update(table).where(table.c.name == name).values(values))
            if changed.rowcount == 0:
                if kind == "sizes" and cost is None:
                    raise InvalidInput(f"A new size needs a cost: '{name}' is not in the catalog yet")
                conn.execute(insert(table).values(name=name, **values))
            _bump_config_version(conn)

    # -- users and credits ------------------------------------------------------------------
    @retrying
    def create_user(self, user_id: str, credits: int, now: datetime) -> User:
        try:
            with self.tx.write() as conn:
                _insert_user(conn, user_id, credits, now, reason="opening balance")
        except IntegrityError as exc:
            raise UserExists(user_id) from exc
        return User(user_id, credits, now)

    @retrying
    def get_user(self, user_id: str) -> User | None:
        with self.tx.read() as conn:
            row = conn.execute(sql.GET_USER, {"p_user": user_id}).first()
        return None if row is None else User(row.id, row.credits, row.created_at)

    @retrying
    def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        try:
            with self.tx.write() as conn:
                if idempotency_key is not None:
                    existing = _entry_by_key(conn, user_id, idempotency_key)
                    if existing is not None:
                        return _same_move(existing, entry_type, delta)
                balance = _add_credits(conn, user_id, delta)
                return _append_entry(
                    conn, user_id, entry_type, delta, balance, None, reason, now, idempotency_key
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            with self.tx.read() as conn:  # a concurrent duplicate committed first
                existing = _entry_by_key(conn, user_id, idempotency_key)
            if existing is None:
                raise
            return _same_move(existing, entry_type, delta)

    @retrying
    def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]:
        if where == NO_FILTER:  # the common page: a prebuilt statement
            query: Any = sql.LEDGER_PAGE if cursor is None else sql.LEDGER_PAGE_AFTER
            params = {"p_user": user_id, "p_limit": limit + 1}
            if cursor is not None:
                params["p_seq"] = _int_cursor(cursor)
            with self.tx.read() as conn:
                rows = conn.execute(query, params).all()
            next_cursor = str(rows[limit - 1].seq) if len(rows) > limit else None
            return Page([_entry(row) for row in rows[:limit]], next_cursor)
        query = select(t.ledger).where(t.ledger.c.user_id == user_id)
        if where.types:
            query = query.where(t.ledger.c.type.in_(sorted(e.value for e in where.types)))
        if where.since is not None:
            query = query.where(t.ledger.c.created_at >= where.since)
        if where.until is not None:
            query = query.where(t.ledger.c.created_at < where.until)
        if cursor is not None:
            query = query.where(t.ledger.c.seq < _int_cursor(cursor))
        query = query.order_by(t.ledger.c.seq.desc()).limit(limit + 1)
        with self.tx.read() as conn:
            rows = conn.execute(query).all()
        next_cursor = str(rows[limit - 1].seq) if len(rows) > limit else None
        return Page([_entry(row) for row in rows[:limit]], next_cursor)

    @retrying
    def ledger_totals(self, user_id: str) -> dict[EntryType, int]:
        with self.tx.read() as conn:
            rows = conn.execute(sql.LEDGER_TOTALS, {"p_user": user_id})
            return {EntryType(kind): int(total) for kind, total in rows}

    # -- generation requests and jobs -------------------------------------------------------
    @retrying
    def debit_and_enqueue(self, new: NewGeneration) -> tuple[GenerationRequest, bool]:
        return self.submit_debit(new).result()

    def submit_debit(
        self, new: NewGeneration, config_version: str | None = None
    ) -> Future[tuple[GenerationRequest, bool]]:
        """Queues the debit for the group-committing writer; the future resolves once it is committed.

        With `config_version` (from `config_snapshot`), the debit refuses with StaleConfig if the
        catalog or the keys have changed since: the caller's cached price and key are then redone.
        """
        return self.writes.submit(_Debit(new, config_version), order=new.spec.user_id)

    def debit_from_loop(
        self, new: NewGeneration, config_version: str | None = None
    ) -> Awaitable[tuple[GenerationRequest, bool]]:
        """`submit_debit` for a caller on an asyncio event loop: its awaitable (see GroupCommit)."""
        return self.writes.submit_from_loop(_Debit(new, config_version), order=new.spec.user_id)

    @retrying
    def get_request(self, request_id: str) -> GenerationRequest | None:
        with self.tx.statement() as conn:
            row = conn.execute(sql.GET_REQUEST, {"p_id": request_id}).first()
        return None if row is None else _request(row)

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
            at, last_id = _decode_cursor(cursor)
            query = query.where((gr.c.created_at < at) | ((gr.c.created_at == at) & (gr.c.id < last_id)))
        query = query.order_by(gr.c.created_at.desc(), gr.c.id.desc()).limit(limit + 1)
        with self.tx.read() as conn:
            rows = conn.execute(query).all()
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(last.created_at, last.id)
        return Page([_request(row) for row in rows[:limit]], next_cursor)

    @retrying
    def claim_job(self, worker_id: str, now: datetime, lease_until: datetime) -> GenerationRequest | None:
        params = {"p_worker": worker_id, "p_lease_until": lease_until, "p_now": now}
        if self.tx.dialect == "postgresql":
            # Most jobs have no webhook: one statement claims the oldest, in one round trip instead
            # of three. If the oldest has one, the transaction below claims it (or a later job, if
            # another worker was quicker) and writes its "start" delivery.
            with self.tx.statement() as conn:
                found = conn.execute(sql.CLAIM_QUIETLY, params).first()
            if found is None:
                return None  # nothing pending
            if found.id is not None:
                return _request(found)
        with self.tx.write() as conn:
            row = conn.execute(sql.CLAIM_JOB, params).first()
            if row is None:
                return None
            request = _request(row)
            _enqueue_webhook(conn, request, "start", now)
            return request

    @retrying
    def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int:
        if not leases:
            return 0
        with self.tx.write() as conn:
            result = conn.execute(
                update(gr)
                .where(
                    tuple_(gr.c.id, gr.c.lease_owner).in_(list(leases.items())),
                    gr.c.status == Status.RUNNING.value,
                )
                .values(lease_expires_at=lease_until)
            )
            return result.rowcount

    @retrying
    def complete(self, request_id: str, worker_id: str, image_url: str, now: datetime) -> bool:
        params = {"p_id": request_id, "p_worker": worker_id, "p_image_url": image_url, "p_now": now}
        if self.tx.dialect == "postgresql":
            # Most jobs have no webhook: one statement does all of it, in one round trip instead of
            # five. It leaves a job with a webhook (and one that is not this worker's) to the
            # transaction below, which finds out which.
            with self.tx.statement() as conn:
                if conn.execute(sql.COMPLETE_QUIETLY, params).first() is not None:
                    return True
        with self.tx.write() as conn:
            result = conn.execute(sql.COMPLETE_JOB, params).first()
            if result is None:
                return False
            conn.execute(sql.LEAVE_IN_FLIGHT, {"p_user": result.user_id})
            _enqueue_webhook(conn, _request(result), "completed", now)
            _notify(conn, sql.DONE_CHANNEL, request_id)
            return True

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
        conditions = [gr.c.id == request_id, gr.c.status == Status.RUNNING.value]
        if worker_id is not None:
            conditions.append(gr.c.lease_owner == worker_id)
        if lease_expired:
            conditions.append(gr.c.lease_expires_at < now)
        return self._finish_with_refund(and_(*conditions), Status.FAILED, error, now)

    @retrying
    def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        pending = and_(gr.c.id == request_id, gr.c.status == Status.PENDING.value)
        return self._finish_with_refund(pending, Status.CANCELED, "canceled", now)

    def _finish_with_refund(self, condition: Any, status: Status, error: str, now: datetime) -> bool:
        with self.tx.write() as conn:
            row = conn.execute(
                update(gr)
                .where(condition)
                .values(
                    status=status.value,
                    error=error,
                    completed_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
                .returning(*gr.c)
            ).first()
            if row is None:
                return False
            balance = _add_credits(conn, row.user_id, row.cost, in_flight=-1)
            _append_entry(conn, row.user_id, EntryType.REFUND, row.cost, balance, row.id, error, now)
            _enqueue_webhook(conn, _request(row), "completed", now)
            _notify(conn, sql.DONE_CHANNEL, row.id)
            return True

    @retrying
    def expired_jobs(self, now: datetime) -> list[GenerationRequest]:
        query = (
            select(gr)
            .where(sql.status_is(Status.RUNNING.value), gr.c.lease_expires_at < now)
            .order_by(gr.c.lease_expires_at)
            .limit(100)
        )
        with self.tx.read() as conn:
            return [_request(row) for row in conn.execute(query)]

    @retrying
    def requeue(self, request_id: str, now: datetime) -> bool:
        with self.tx.write() as conn:
            result = conn.execute(
                update(gr)
                .where(
                    gr.c.id == request_id,
                    gr.c.status == Status.RUNNING.value,
                    gr.c.lease_expires_at < now,
                )
                .values(status=Status.PENDING.value, lease_owner=None, lease_expires_at=None)
            )
            _notify(conn, sql.JOBS_CHANNEL)
            return result.rowcount == 1

    def listen(
        self, on_job: Callable[[], None], on_done: Callable[[str], None], stop: threading.Event
    ) -> None:
        """Calls back on other processes' NOTIFYs until `stop` is set; returns at once on SQLite."""
        if self.tx.dialect != "postgresql":
            return
        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {sql.JOBS_CHANNEL}")
                    conn.execute(f"LISTEN {sql.DONE_CHANNEL}")
                    on_job()  # anything queued while we were not listening
                    while not stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.channel == sql.JOBS_CHANNEL:
                                on_job()
                            else:
                                on_done(note.payload)
            except psycopg.Error:
                log.warning("lost the LISTEN connection; reconnecting", exc_info=True)
                stop.wait(1.0)

    # -- api keys ---------------------------------------------------------------------------
    @retrying
    def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
        with self.tx.write() as conn:
            conn.execute(
                insert(t.api_keys).values(id=key_id, key_hash=key_hash, user_id=user_id, created_at=now)
            )
        return ApiKey(key_id, user_id, now)

    @retrying
    def find_api_key(self, key_hash: str) -> ApiKey | None:
        with self.tx.read() as conn:
            row = conn.execute(sql.FIND_API_KEY, {"p_hash": key_hash}).first()
        return None if row is None else ApiKey(row.id, row.user_id, row.created_at, row.revoked_at)

    @retrying
    def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        with self.tx.write() as conn:
            result = conn.execute(
                update(t.api_keys)
                .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            _bump_config_version(conn)
            return result.rowcount == 1

    # -- idempotency keys -------------------------------------------------------------------
    @retrying
    def begin_idempotent(
        self, scope: str, key: str, fingerprint: str, now: datetime, lock_until: datetime
    ) -> Idempotency:
        ik = t.idempotency_keys
        try:
            with self.tx.write() as conn:
                row = conn.execute(select(ik).where(ik.c.scope == scope, ik.c.key == key)).first()
                if row is None:
                    conn.execute(
                        insert(ik).values(
                            scope=scope,
                            key=key,
                            fingerprint=fingerprint,
                            state="in_progress",
                            created_at=now,
                            locked_until=lock_until,
                        )
                    )
                    return Idempotency("new")
                if row.fingerprint != fingerprint:
                    raise IdempotencyConflict(
                        "Idempotency-Key was already used with a different request", idempotencyKey=key
                    )
                if row.state == "done":
                    headers = dict(row.response_headers or {})
                    return Idempotency(
                        "replay", StoredResponse(row.response_status, row.response_body, headers)
                    )
                if row.locked_until is not None and row.locked_until > now:
                    return Idempotency("busy")
                # The first attempt's process died mid-request: take over. The effect itself is
                # deduplicated where it is written (request or ledger entry keyed by the same key).
                conn.execute(
                    update(ik).where(ik.c.scope == scope, ik.c.key == key).values(locked_until=lock_until)
                )
                return Idempotency("new")
        except IntegrityError:
            return Idempotency("busy")  # a concurrent first attempt inserted the key a moment ago

    @retrying
    def finish_idempotent(self, scope: str, key: str, response: StoredResponse) -> None:
        ik = t.idempotency_keys
        with self.tx.write() as conn:
            conn.execute(
                update(ik)
                .where(ik.c.scope == scope, ik.c.key == key)
                .values(
                    state="done",
                    response_status=response.status,
                    response_body=response.body,
                    response_headers=response.headers,
                    locked_until=None,
                )
            )

    @retrying
    def release_idempotent(self, scope: str, key: str) -> None:
        ik = t.idempotency_keys
        with self.tx.write() as conn:
            conn.execute(delete(ik).where(ik.c.scope == scope, ik.c.key == key, ik.c.state == "in_progress"))

    @retrying
    def purge_idempotency(self, created_before: datetime) -> int:
        ik = t.idempotency_keys
        with self.tx.write() as conn:
            return conn.execute(delete(ik).where(ik.c.created_at < created_before)).rowcount

    # -- webhooks ---------------------------------------------------------------------------
    @retrying
    def claim_webhooks(self, now: datetime, lease_until: datetime, limit: int) -> list[WebhookDelivery]:
        wd = t.webhook_deliveries
        due = (
            select(wd.c.id)
            .where(
                wd.c.state == "pending",
                wd.c.next_attempt_at <= now,
                (wd.c.lease_expires_at.is_(None)) | (wd.c.lease_expires_at < now),
            )
            .order_by(wd.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.tx.write() as conn:
            ids = list(conn.execute(due).scalars())
            if not ids:
                return []
            rows = conn.execute(
                update(wd)
                .where(wd.c.id.in_(ids))
                .values(lease_expires_at=lease_until, attempts=wd.c.attempts + 1)
                .returning(*wd.c)
            ).all()
        return [
            WebhookDelivery(
                r.id, r.generation_request_id, r.event, r.url, dict(r.payload), r.attempts, r.created_at
            )
            for r in sorted(rows, key=lambda r: r.next_attempt_at)
        ]

    @retrying
    def webhook_delivered(self, delivery_id: str, now: datetime) -> None:
        wd = t.webhook_deliveries
        with self.tx.write() as conn:
            conn.execute(
                update(wd)
                .where(wd.c.id == delivery_id)
                .values(state="delivered", delivered_at=now, lease_expires_at=None, last_error=None)
            )

    @retrying
    def webhook_failed(self, delivery_id: str, error: str, retry_at: datetime | None) -> None:
        wd = t.webhook_deliveries
        values: dict[str, Any] = {"last_error": error[:1000], "lease_expires_at": None}
        if retry_at is None:
            values["state"] = "abandoned"
        else:
            values["next_attempt_at"] = retry_at
        with self.tx.write() as conn:
            conn.execute(update(wd).where(wd.c.id == delivery_id).values(values))

    @retrying
    def get_meta(self, key: str) -> str | None:
        with self.tx.read() as conn:
            return conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).scalar_one_or_none()

    @retrying
    def put_meta_once(self, key: str, value: str) -> str:
        """Stores `value` unless the key has one already; returns the value that is stored."""
        try:
            with self.tx.write() as conn:
                existing = conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).first()
                if existing is not None:
                    return str(existing.value)
                conn.execute(insert(t.meta).values(key=key, value=value))
                return value
        except IntegrityError:
            stored = self.get_meta(key)
            assert stored is not None
            return stored

    # -- reports ----------------------------------------------------------------------------
    @retrying
    def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]:
        dims = (gr.c.model, gr.c.style, gr.c.color, gr.c.size, gr.c.status)
        query = (
            select(*dims, func.count(), func.coalesce(func.sum(gr.c.cost), 0))
            .where(gr.c.created_at >= start, gr.c.created_at < end)
            .group_by(*dims)
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
    def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None:
        start = datetime.fromisoformat(document["periodStart"])
        end = datetime.fromisoformat(document["periodEnd"])
        with self.tx.write() as conn:
            conn.execute(delete(t.reports).where(t.reports.c.id == report_id))
            conn.execute(
                insert(t.reports).values(
                    id=report_id,
                    period_start=start,
                    period_end=end,
                    document=document,
                    generated_at=now,
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
            at, last_id = _decode_cursor(cursor)
            query = query.where(
                (rep.c.period_start < at) | ((rep.c.period_start == at) & (rep.c.id < last_id))
            )
        query = query.order_by(rep.c.period_start.desc(), rep.c.id.desc()).limit(limit + 1)
        with self.tx.read() as conn:
            rows = conn.execute(query).all()
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(last.period_start, last.id)
        return Page([dict(row.document) for row in rows[:limit]], next_cursor)

    @retrying
    def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        if self.tx.dialect == "sqlite":
            millis = (func.julianday(gr.c.completed_at) - func.julianday(gr.c.started_at)) * 86_400_000.0
            bucket = cast(millis / bucket_ms, Integer)
        else:
            millis = func.extract("epoch", gr.c.completed_at - gr.c.started_at) * 1000
            bucket = cast(func.floor(millis / bucket_ms), Integer)
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

    # -- scheduler --------------------------------------------------------------------------
    @retrying
    def claim_scheduled_run(self, period_id: str, owner: str, now: datetime, stale_before: datetime) -> bool:
        runs = t.scheduled_runs
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
        runs = t.scheduled_runs
        with self.tx.write() as conn:
            conn.execute(update(runs).where(runs.c.period_id == period_id).values(finished_at=now))

    @retrying
    def last_scheduled_run(self) -> str | None:
        runs = t.scheduled_runs
        query = (
            select(runs.c.period_id).where(runs.c.finished_at.is_not(None)).order_by(runs.c.period_id.desc())
        )
        with self.tx.read() as conn:
            return conn.execute(query.limit(1)).scalar_one_or_none()

    # -- audit, import, export --------------------------------------------------------------
    def violations(self) -> Iterator[Violation]:
        with self.tx.read() as conn:
            yield from _balance_violations(conn)
            yield from _request_violations(conn)
            yield from _orphan_entries(conn)

    def export_records(self) -> Iterator[dict[str, Any]]:
        with self.tx.read() as conn:
            yield from export_records(conn)

    def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
        with self.tx.write() as conn:
            return import_records(conn, records, now)


def _notify(conn: Connection, channel: str, payload: str = "") -> None:
    """PostgreSQL NOTIFY, delivered when the transaction commits; SQLite processes poll instead."""
    if conn.dialect.name == "postgresql":
        sql.NOTIFY.execute(conn, {"p_channel": channel, "p_payload": payload})


# -- helpers shared by the methods above (each runs inside the caller's transaction) -----------
@dataclass(frozen=True)
class _Debit:
    """Debits and queues one create (or finds its Idempotency-Key's request), in a batch's transaction.

    On PostgreSQL a batch of creates without Idempotency-Key is pipelined (see Pipelined): the
    configuration version, every debit and the NOTIFY go out together, and the results are read
    after one round trip.
    """

    new: NewGeneration
    config_version: str | None

    def __call__(self, conn: Connection, batch: Batch) -> tuple[GenerationRequest, bool]:
        self._check_config(conn, batch)
        _notify_jobs_at_commit(batch)
        if self.new.idempotency_key is None:
            return _debit_once(conn, self.new)
        try:
            with conn.begin_nested():
                return _debit_once(conn, self.new)
        except IntegrityError:
            # A duplicate with the same Idempotency-Key, in another process, committed first: replay it.
            return _debit_once(conn, self.new)

    def send(self, conn: Connection, batch: Batch) -> Any:
        if self.config_version is not None and "config_sent" not in batch:
            batch["config_sent"] = sql.CONFIG_VERSION_FAST.execute(conn, {})
        _notify_jobs_at_commit(batch)
        values = _request_values(self.new)
        return values, sql.DEBIT_IN_ONE.execute(conn, _debit_params(self.new, values))

    def receive(self, conn: Connection, batch: Batch, sent: Any) -> tuple[GenerationRequest, bool]:
        values, debited = sent
        self._check_config(conn, batch)  # the debit was written: StaleConfig undoes the batch
        return _debited(conn, self.new, values, debited)

    @property
    def pipelines(self) -> bool:
        return self.new.idempotency_key is None

    def on_loop(self) -> LoopStatement[tuple[GenerationRequest, bool]]:
        """The debit as one row of a statement the event loop runs for a batch (see LoopPipeline):
        the statement checks the configuration version and wakes the workers itself."""
        values = _request_values(self.new)

        def answer(applied: bool) -> tuple[GenerationRequest, bool] | HandOver:
            # Not applied: the debit moved nothing (short of credits, at the in-flight limit, or
            # priced with a stale configuration). The writer thread runs it again, to say why.
            return (_new_request(values), True) if applied else HAND_OVER

        row = {**_debit_params(self.new, values), "p_config": self.config_version}
        return LoopStatement(sql.DEBIT_ROWS, row, self.new.spec.user_id, answer)

    def _check_config(self, conn: Connection, batch: Batch) -> None:
        if self.config_version is None:
            return
        if "config_version" not in batch:  # read once per transaction: no writer changes it meanwhile
            cursor = batch.pop("config_sent", None) or sql.CONFIG_VERSION_FAST.execute(conn, {})
            batch["config_version"] = _version(cursor.fetchone())
        if batch["config_version"] != self.config_version:
            raise StaleConfig


def _version(row: tuple[Any, ...] | None) -> str:
    """The configuration version from CONFIG_VERSION's row ("" when there is none)."""
    return (row[0] if row else None) or ""


def _notify_jobs_at_commit(batch: Batch) -> None:
    # One NOTIFY for the whole batch wakes the workers of every process.
    batch.setdefault(BEFORE_COMMIT, {})["notify jobs"] = _notify_jobs


def _notify_jobs(conn: Connection) -> None:
    _notify(conn, sql.JOBS_CHANNEL)


def _debit_once(conn: Connection, new: NewGeneration) -> tuple[GenerationRequest, bool]:
    spec = new.spec
    if new.idempotency_key is not None:
        # Lock the user first: a concurrent duplicate then waits here and, once the first
        # commits, finds its request (rather than a balance it has already spent).
        conn.execute(sql.LOCK_USER, {"p_user": spec.user_id})
        existing = _by_idempotency_key(conn, spec.user_id, new.idempotency_key)
        if existing is not None:
            if existing.fingerprint != new.fingerprint:
                raise IdempotencyConflict(
                    "Idempotency-Key was already used with a different request body",
                    idempotencyKey=new.idempotency_key,
                )
            return _request(existing), False
    values = _request_values(new)
    if conn.dialect.name == "postgresql":  # each statement is a round trip there: send one
        return _debited(conn, new, values, sql.DEBIT_IN_ONE.execute(conn, _debit_params(new, values)))
    balance = _add_credits(conn, spec.user_id, -new.cost, in_flight=1, max_in_flight=new.max_in_flight)
    sql.INSERT_REQUEST_FAST.execute(conn, values)
    _append_entry(conn, spec.user_id, EntryType.DEDUCTION, -new.cost, balance, new.id, None, new.created_at)
    return _new_request(values), True


def _debited(
    conn: Connection, new: NewGeneration, values: dict[str, Any], cursor: Any
) -> tuple[GenerationRequest, bool]:
    """The answer to DEBIT_IN_ONE (its cursor): the request it queued, or why it moved nothing."""
    if cursor.fetchone() is None:
        _refuse(conn, new.spec.user_id, -new.cost, new.max_in_flight)
    return _new_request(values), True


def _request_values(new: NewGeneration) -> dict[str, Any]:
    spec = new.spec
    return {
        "id": new.id,
        "user_id": spec.user_id,
        "model": spec.model,
        "style": spec.style,
        "color": spec.color,
        "size": spec.size,
        "prompt": spec.prompt,
        "cost": new.cost,
        "status": Status.PENDING.value,
        "attempts": 0,
        "idempotency_key": new.idempotency_key,
        "fingerprint": new.fingerprint,
        "created_at": new.created_at,
        "webhook": new.webhook,
        "webhook_events": ",".join(sorted(new.webhook_events)) or None,
    }


def _debit_params(new: NewGeneration, values: dict[str, Any]) -> dict[str, Any]:
    """DEBIT_IN_ONE's parameters: the balance move, the request's values, the ledger entry's id."""
    return {
        "p_user": new.spec.user_id,
        "p_delta": -new.cost,
        "p_max_in_flight": new.max_in_flight if new.max_in_flight is not None else NO_LIMIT,
        "e_id": new_id(),
        **{f"r_{name}": value for name, value in values.items()},
    }


def _catalog(conn: Connection) -> Catalog:
    models = {row.name: _model(row) for row in conn.execute(sql.MODELS)}
    styles = conn.execute(sql.ENABLED_STYLES).scalars()
    colors = conn.execute(sql.ENABLED_COLORS).scalars()
    sizes = conn.execute(sql.ENABLED_SIZES)
    return Catalog(models, frozenset(styles), frozenset(colors), {name: cost for name, cost in sizes})


def _model(row: Any) -> ModelSettings:
    return ModelSettings(row.name, row.failure_rate, row.latency_ms, row.enabled)


def _bump_config_version(conn: Connection) -> None:
    """Marks the catalog or the keys as changed: every process's cached copy is stale from now on."""
    version = new_id()
    if conn.execute(sql.SET_CONFIG_VERSION, {"p_version": version}).rowcount == 0:
        conn.execute(insert(t.meta).values(key=sql.CONFIG_VERSION_KEY, value=version))


def _insert_catalog(conn: Connection, catalog: Catalog) -> None:
    for model in catalog.models.values():
        conn.execute(
            insert(t.models).values(
                name=model.name,
                failure_rate=model.failure_rate,
                latency_ms=model.latency_ms,
                enabled=model.enabled,
            )
        )
    conn.execute(insert(t.styles), [{"name": name, "enabled": True} for name in sorted(catalog.styles)])
    conn.execute(insert(t.colors), [{"name": name, "enabled": True} for name in sorted(catalog.colors)])
    conn.execute(
        insert(t.sizes),
        [{"name": name, "cost": cost, "enabled": True} for name, cost in catalog.sizes.items()],
    )


def _insert_user(
    conn: Connection, user_id: str, credits: int, now: datetime, *, reason: str, entry_id: str | None = None
) -> None:
    conn.execute(insert(t.users).values(id=user_id, credits=credits, created_at=now))
    if credits:
        _append_entry(conn, user_id, EntryType.GRANT, credits, credits, None, reason, now, entry_id=entry_id)


def _add_credits(
    conn: Connection, user_id: str, delta: int, *, in_flight: int = 0, max_in_flight: int | None = None
) -> int:
    """Moves a balance by `delta` unless that would take it below 0; returns the new balance.

    `in_flight` moves the user's count of queued and running requests in the same statement, and
    `max_in_flight` refuses the move when the count is already there: one conditional UPDATE, so
    no interleaving of clients can overdraw a balance or exceed the limit.
    """
    params: dict[str, Any] = {"p_user": user_id, "p_delta": delta, "p_in_flight": in_flight}
    if max_in_flight is None:
        row = sql.MOVE_CREDITS_FAST.execute(conn, params).fetchone()
    else:
        row = sql.MOVE_CREDITS_LIMITED_FAST.execute(
            conn, {**params, "p_max_in_flight": max_in_flight}
        ).fetchone()
    if row is not None:
        return int(row[0])
    _refuse(conn, user_id, delta, max_in_flight)


def _refuse(conn: Connection, user_id: str, delta: int, max_in_flight: int | None) -> NoReturn:
    """Why a conditional UPDATE moved nothing: no such user, the in-flight limit, or the balance."""
    user = conn.execute(sql.USER_STATE, {"p_user": user_id}).first()
    if user is None:
        raise UserNotFound(user_id)
    if max_in_flight is not None and user.in_flight >= max_in_flight:
        raise TooManyRequests(
            f"User {user_id} already has {user.in_flight} generations queued or running "
            f"(limit {max_in_flight})",
            retry_after=1,
            userId=user_id,
            inFlight=user.in_flight,
            limit=max_in_flight,
        )
    raise InsufficientCredits("Insufficient credits", userId=user_id, required=-delta)


def _append_entry(
    conn: Connection,
    user_id: str,
    entry_type: EntryType,
    delta: int,
    balance_after: int,
    request_id: str | None,
    reason: str | None,
    now: datetime,
    idempotency_key: str | None = None,
    entry_id: str | None = None,
) -> LedgerEntry:
    entry_id = entry_id or new_id()
    entry = LedgerEntry(entry_id, user_id, entry_type, delta, balance_after, request_id, reason, now)
    sql.INSERT_ENTRY_FAST.execute(
        conn,
        {
            "id": entry.id,
            "user_id": user_id,
            "type": entry_type.value,
            "delta": delta,
            "balance_after": balance_after,
            "generation_request_id": request_id,
            "reason": reason,
            "created_at": now,
            "idempotency_key": idempotency_key,
        },
    )
    return entry


def _entry_by_key(conn: Connection, user_id: str, key: str) -> LedgerEntry | None:
    query = select(t.ledger).where(t.ledger.c.user_id == user_id, t.ledger.c.idempotency_key == key)
    row = conn.execute(query).first()
    return None if row is None else _entry(row)


def _same_move(existing: LedgerEntry, entry_type: EntryType, delta: int) -> LedgerEntry:
    if (existing.type, existing.delta) != (entry_type, delta):
        raise IdempotencyConflict("Idempotency-Key was already used for a different credit move")
    return existing


def _enqueue_webhook(conn: Connection, request: GenerationRequest, event: str, now: datetime) -> None:
    if not request.wants_webhook(event) or request.webhook is None:
        return
    conn.execute(
        insert(t.webhook_deliveries).values(
            id="msg_" + new_id(),
            generation_request_id=request.id,
            event=event,
            url=request.webhook,
            payload={"type": f"generation.{event}", "data": to_resource(request)},
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


def _by_idempotency_key(conn: Connection, user_id: str, key: str) -> Row[Any] | None:
    return conn.execute(sql.BY_IDEMPOTENCY_KEY, {"p_user": user_id, "p_key": key}).first()


def _request(row: Row[Any]) -> GenerationRequest:
    return GenerationRequest(
        id=row.id,
        user_id=row.user_id,
        model=row.model,
        style=row.style,
        color=row.color,
        size=row.size,
        prompt=row.prompt,
        cost=row.cost,
        status=Status(row.status),
        image_url=row.image_url,
        error=row.error,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        idempotency_key=row.idempotency_key,
        webhook=row.webhook,
        webhook_events=frozenset((row.webhook_events or "").split(",")) - {""},
    )


def _new_request(values: dict[str, Any]) -> GenerationRequest:
    """The request just inserted, from the values written (no read back)."""
    return GenerationRequest(
        id=values["id"],
        user_id=values["user_id"],
        model=values["model"],
        style=values["style"],
        color=values["color"],
        size=values["size"],
        prompt=values["prompt"],
        cost=values["cost"],
        status=Status.PENDING,
        image_url=None,
        error=None,
        attempts=0,
        created_at=values["created_at"],
        started_at=None,
        completed_at=None,
        idempotency_key=values["idempotency_key"],
        webhook=values["webhook"],
        webhook_events=frozenset((values["webhook_events"] or "").split(",")) - {""},
    )


def _entry(row: Row[Any]) -> LedgerEntry:
    return LedgerEntry(
        id=row.id,
        user_id=row.user_id,
        type=EntryType(row.type),
        delta=row.delta,
        balance_after=row.balance_after,
        generation_request_id=row.generation_request_id,
        reason=row.reason,
        timestamp=row.created_at,
    )


def _int_cursor(cursor: str) -> int:
    if not (cursor.isascii() and cursor.isdigit() and int(cursor) < 2**63):
        raise InvalidInput(f"Invalid cursor '{cursor[:80]}'")
    return int(cursor)


def _encode_cursor(at: datetime, last_id: str) -> str:
    """An opaque, URL-safe cursor: base64url of "<time>|<id>" of the last item on the page."""
    raw = f"{at.isoformat()}|{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, separator, last_id = raw.partition("|")
        at = datetime.fromisoformat(at_text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Invalid cursor '{cursor[:80]}'") from exc
    if not separator or at.tzinfo is None or not valid_id(last_id):
        raise InvalidInput(f"Invalid cursor '{cursor[:80]}'")
    return at, last_id


def _balance_violations(conn: Connection) -> Iterator[Violation]:
    ledger_sum = func.coalesce(func.sum(t.ledger.c.delta), 0)
    query = (
        select(t.users.c.id, t.users.c.credits, ledger_sum.label("ledger_sum"))
        .select_from(t.users.outerjoin(t.ledger, t.ledger.c.user_id == t.users.c.id))
        .group_by(t.users.c.id, t.users.c.credits)
        .having((t.users.c.credits != ledger_sum) | (t.users.c.credits < 0))
    )
    for row in conn.execute(query):
        if row.credits < 0:
            yield Violation(1, row.id, f"user {row.id} has a negative balance ({row.credits})")
        if row.credits != row.ledger_sum:
            yield Violation(
                1,
                row.id,
                f"user {row.id} has {row.credits} credits but the ledger sums to {row.ledger_sum}",
            )


def _request_violations(conn: Connection) -> Iterator[Violation]:
    led = t.ledger
    is_deduction = led.c.type == EntryType.DEDUCTION.value
    is_refund = led.c.type == EntryType.REFUND.value
    deductions = func.sum(case((is_deduction, 1), else_=0))
    deducted = func.coalesce(func.sum(case((is_deduction, -led.c.delta), else_=0)), 0)
    refunds = func.sum(case((is_refund, 1), else_=0))
    refunded = func.coalesce(func.sum(case((is_refund, led.c.delta), else_=0)), 0)
    refund_expected = case((gr.c.status.in_([Status.FAILED.value, Status.CANCELED.value]), 1), else_=0)
    healthy = and_(
        deductions == 1,
        deducted == gr.c.cost,
        refunds == refund_expected,
        refunded == refund_expected * gr.c.cost,
    )
    history_only = and_(gr.c.source == "import", func.count(led.c.id) == 0)
    query = (
        select(
            gr.c.id,
            gr.c.status,
            gr.c.cost,
            deductions.label("deductions"),
            deducted.label("deducted"),
            refunds.label("refunds"),
            refunded.label("refunded"),
        )
        .select_from(gr.outerjoin(led, led.c.generation_request_id == gr.c.id))
        .group_by(gr.c.id, gr.c.status, gr.c.cost, gr.c.source)
        .having(~healthy & ~history_only)
    )
    for row in conn.execute(query):
        status = Status(row.status)
        invariant = 3 if row.deductions == 1 else 2
        want = "one refund" if status.refunded else "no refund"
        yield Violation(
            invariant,
            row.id,
            f"request {row.id} ({status.value}, cost {row.cost}) has {row.deductions or 0} deduction(s) "
            f"of {row.deducted} and {row.refunds or 0} refund(s) of {row.refunded}; "
            f"expected one deduction of {row.cost} and {want}",
        )


def _orphan_entries(conn: Connection) -> Iterator[Violation]:
    led = t.ledger
    query = (
        select(led.c.id, led.c.type, led.c.generation_request_id)
        .select_from(led.outerjoin(gr, gr.c.id == led.c.generation_request_id))
        .where(
            led.c.type.in_([EntryType.DEDUCTION.value, EntryType.REFUND.value]),
            gr.c.id.is_(None),
        )
    )
    for row in conn.execute(query):
        yield Violation(
            2,
            row.id,
            f"{row.type} {row.id} points at request {row.generation_request_id}, which does not exist",
        )
