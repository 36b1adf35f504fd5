"""The SQL storage adapter, for SQLite and PostgreSQL: the async ports over the SQL database.

The SQL itself is synchronous (database.py and its parts). This class decides once, when it is
built, how each port call runs, so that no caller ever asks:

- a create's debit goes to the group-committing writer from the event loop (GroupCommit): on SQLite
  the creates of one turn of the loop are one batch run on the loop itself, on PostgreSQL they are
  the rows of one statement the loop sends over its own async connection (LoopPipeline). Neither
  hands the create to a thread; what must run whole (an Idempotency-Key on PostgreSQL, a claimed
  create, a refused debit that must say why) goes to the writer thread.
- on SQLite, a short read runs on the event loop: SQLite reads take microseconds and never wait
  for writers (WAL), where handing them to a thread and back costs more than the read. Should the
  database not be readable at once, or the loop's connection be in use by another loop, the read
  (having done nothing) runs on a thread instead.
- everything else (writes, PostgreSQL's reads, long scans) runs on a thread pool the adapter owns.
- PostgreSQL's LISTEN runs on the event loop, over an async connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from imagegen.domain.audit import Violation
from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.generation import GenerationRequest, NewGeneration, Status
from imagegen.domain.idempotency import Idempotency, StoredResponse
from imagegen.domain.keys import ApiKey
from imagegen.domain.ledger import NO_FILTER, EntryType, LedgerEntry, LedgerFilter
from imagegen.domain.paging import Page
from imagegen.domain.queues import ModelQueue
from imagegen.domain.reports import GroupCount
from imagegen.domain.users import User
from imagegen.domain.webhooks import WebhookDelivery
from imagegen.ports import Lease
from imagegen.storage.sql.database import SqlDatabase
from imagegen.storage.sql.transactions import ReaderBusy
from imagegen.storage.threads import Threads

P = ParamSpec("P")
R = TypeVar("R")
THREADS = 32  # at most this many calls at once on threads (each holds one pooled connection)


class SqlStorage:
    def __init__(self, url: str) -> None:
        self.database = db = SqlDatabase(url)
        # The database's parts, for tools that work on it in SQL (bench/, tests that count rows).
        self.engine, self.tx, self.writes, self.dialect = db.engine, db.tx, db.writes, db.dialect
        self._threads = Threads(THREADS, "imagegen-sql")
        self._on_thread = self._threads.run
        self._read = self._read_on_loop if db.tx.reads_on_loop else self._on_thread

    async def _read_on_loop(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with self.tx.reading_on_loop():
                return call(*args, **kwargs)
        except ReaderBusy:
            return await self._on_thread(call, *args, **kwargs)

    # -- the database -----------------------------------------------------------------------
    async def migrate(self) -> None:
        await self._on_thread(self.database.migrate)

    async def load_initial_data(
        self,
        catalog: Catalog,
        users: dict[str, int],
        keys: list[tuple[str, str, str | None]],
        now: datetime,
    ) -> bool:
        return await self._on_thread(self.database.load_initial_data, catalog, users, keys, now)

    async def ping(self) -> None:
        await self._read(self.database.ping)

    async def listen(self, on_job: Callable[[], None], on_done: Callable[[str], None]) -> None:
        await self.dialect.listen(self.engine, on_job, on_done)

    async def close(self) -> None:
        # The writer thread finishes its batch first: joined off the loop.
        await asyncio.to_thread(self.database.close)
        self._threads.close()

    # -- catalog ----------------------------------------------------------------------------
    async def catalog(self) -> Catalog:
        return await self._read(self.database.catalog)

    async def config_snapshot(self) -> tuple[str, Catalog]:
        return await self._read(self.database.config_snapshot)

    async def config_version(self) -> str:
        return await self._read(self.database.config_version)

    async def model_settings(self, name: str) -> ModelSettings | None:
        return await self._read(self.database.model_settings, name)

    async def put_model(self, model: ModelSettings) -> None:
        await self._on_thread(self.database.put_model, model)

    async def update_model(
        self, name: str, change: Callable[[ModelSettings | None], ModelSettings]
    ) -> ModelSettings:
        return await self._on_thread(self.database.update_model, name, change)

    async def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None:
        await self._on_thread(self.database.put_option, kind, name, enabled=enabled, cost=cost)

    # -- users and credits ------------------------------------------------------------------
    async def create_user(self, user_id: str, credits: int, now: datetime) -> User:
        return await self._on_thread(self.database.create_user, user_id, credits, now)

    async def get_user(self, user_id: str) -> User | None:
        return await self._read(self.database.get_user, user_id)

    async def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        move = self.database.move_credits
        return await self._on_thread(move, user_id, entry_type, delta, reason, now, idempotency_key)

    async def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]:
        return await self._read(self.database.ledger, user_id, limit, cursor, where)

    async def ledger_totals(self, user_id: str) -> dict[EntryType, int]:
        return await self._read(self.database.ledger_totals, user_id)

    # -- generation requests ----------------------------------------------------------------
    async def debit_and_enqueue(
        self, new: NewGeneration, config_version: str | None = None, claim: Lease | None = None
    ) -> tuple[GenerationRequest, bool]:
        return await self.database.debit_on_loop(new, config_version, claim)

    async def get_request(self, request_id: str) -> GenerationRequest | None:
        return await self._read(self.database.get_request, request_id)

    async def list_requests(
        self, user_id: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> Page[GenerationRequest]:
        return await self._read(self.database.list_requests, user_id, status, limit, cursor)

    async def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        return await self._on_thread(self.database.cancel_and_refund, request_id, now)

    # -- jobs -------------------------------------------------------------------------------
    async def claim_job(
        self, lease: Lease, now: datetime, models: Collection[str] | None = None
    ) -> GenerationRequest | None:
        return await self._on_thread(self.database.claim_job, lease, now, models)

    async def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int:
        return await self._on_thread(self.database.extend_leases, leases, lease_until)

    async def complete(self, request_id: str, worker_id: str, image_url: str, now: datetime) -> bool:
        return await self._on_thread(self.database.complete, request_id, worker_id, image_url, now)

    async def fail_and_refund(
        self,
        request_id: str,
        error: str,
        now: datetime,
        *,
        worker_id: str | None = None,
        lease_expired: bool = False,
    ) -> bool:
        fail = self.database.fail_and_refund
        return await self._on_thread(
            fail, request_id, error, now, worker_id=worker_id, lease_expired=lease_expired
        )

    async def expired_jobs(self, now: datetime) -> list[GenerationRequest]:
        return await self._on_thread(self.database.expired_jobs, now)

    async def requeue(self, request_id: str, now: datetime) -> bool:
        return await self._on_thread(self.database.requeue, request_id, now)

    async def queues(self, now: datetime) -> list[ModelQueue]:
        return await self._on_thread(self.database.queues, now)  # a scan of the queue

    # -- api keys ---------------------------------------------------------------------------
    async def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
        return await self._on_thread(self.database.add_api_key, key_id, key_hash, user_id, now)

    async def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        return await self._on_thread(self.database.revoke_api_key, key_id, now)

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        return await self._read(self.database.find_api_key, key_hash)

    async def list_api_keys(self, user_id: str | None) -> list[ApiKey]:
        return await self._on_thread(self.database.list_api_keys, user_id)

    async def record_key_uses(self, used: dict[str, datetime]) -> None:
        await self._on_thread(self.database.record_key_uses, used)

    # -- idempotency keys -------------------------------------------------------------------
    async def begin_idempotent(
        self, scope: str, key: str, fingerprint: str, now: datetime, lock_until: datetime
    ) -> Idempotency:
        return await self._on_thread(self.database.begin_idempotent, scope, key, fingerprint, now, lock_until)

    async def finish_idempotent(self, scope: str, key: str, response: StoredResponse) -> None:
        await self._on_thread(self.database.finish_idempotent, scope, key, response)

    async def release_idempotent(self, scope: str, key: str) -> None:
        await self._on_thread(self.database.release_idempotent, scope, key)

    async def purge_idempotency(self, created_before: datetime) -> int:
        return await self._on_thread(self.database.purge_idempotency, created_before)

    # -- webhooks and settings --------------------------------------------------------------
    async def claim_webhooks(self, now: datetime, lease_until: datetime, limit: int) -> list[WebhookDelivery]:
        return await self._on_thread(self.database.claim_webhooks, now, lease_until, limit)

    async def webhook_delivered(self, delivery_id: str, now: datetime) -> None:
        await self._on_thread(self.database.webhook_delivered, delivery_id, now)

    async def webhook_failed(self, delivery_id: str, error: str, retry_at: datetime | None) -> None:
        await self._on_thread(self.database.webhook_failed, delivery_id, error, retry_at)

    async def get_meta(self, key: str) -> str | None:
        return await self._read(self.database.get_meta, key)

    async def put_meta_once(self, key: str, value: str) -> str:
        return await self._on_thread(self.database.put_meta_once, key, value)

    # -- reports (the scans run on threads: SQLite lets go of the GIL while it scans) ---------
    async def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]:
        return await self._on_thread(self.database.group_counts, start, end)

    async def unique_users(self, start: datetime, end: datetime) -> int:
        return await self._on_thread(self.database.unique_users, start, end)

    async def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        return await self._on_thread(self.database.generation_time_histogram, start, end, bucket_ms)

    async def earliest_request_at(self) -> datetime | None:
        return await self._on_thread(self.database.earliest_request_at)

    async def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None:
        await self._on_thread(self.database.save_report, report_id, document, now)

    async def get_report(self, report_id: str) -> dict[str, Any] | None:
        return await self._read(self.database.get_report, report_id)

    async def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
        return await self._read(self.database.list_reports, limit, cursor)

    # -- the scheduler ----------------------------------------------------------------------
    async def claim_scheduled_run(
        self, period_id: str, owner: str, now: datetime, stale_before: datetime
    ) -> bool:
        return await self._on_thread(self.database.claim_scheduled_run, period_id, owner, now, stale_before)

    async def finish_scheduled_run(self, period_id: str, now: datetime) -> None:
        await self._on_thread(self.database.finish_scheduled_run, period_id, now)

    async def last_scheduled_run(self) -> str | None:
        return await self._read(self.database.last_scheduled_run)

    # -- audit, import and export -----------------------------------------------------------
    async def violations(self) -> list[Violation]:
        return await self._on_thread(self.database.violations)

    async def export_records(self) -> AsyncIterator[dict[str, Any]]:
        """The records of one read transaction, read on a thread a chunk at a time."""
        async for record in self._threads.iterate(self.database.export_records()):
            yield record

    async def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
        return await self._on_thread(self.database.import_records, records, now)
