"""The Firestore storage adapter: the async ports over the Firestore database (database.py).

Every call runs the synchronous google-cloud-firestore client on a thread pool this adapter owns.
Why threads rather than the sync calls on the event loop: each call is one or more network round
trips (milliseconds), and a contended credit move retries with pauses (conditional.py, errors.py)
and queues on a per-user lock; on the loop, one slow call would stall every other request and job
of the process. (A Cloud Function serves one request per instance, where the loop would do; the
same adapter also backs `imagegen serve --database-url firestore://...`, where it would not.)
Firestore's own async client would spare the threads, but the transactions, conditional commits
and locks here are written for the sync one: one hop to a thread per call is the cost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Iterable
from datetime import datetime
from typing import Any

from imagegen.domain.audit import Violation
from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.errors import InvalidInput
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
from imagegen.storage.firestore.database import FirestoreDatabase
from imagegen.storage.threads import Threads

THREADS = 32  # at most this many calls at once on threads


class FirestoreStorage:
    """`imagegen.ports.Storage` on Firestore (or its emulator, when FIRESTORE_EMULATOR_HOST is set)."""

    def __init__(self, project: str, database: str = "(default)") -> None:
        self.project = project
        self.database = FirestoreDatabase(project, database)
        self.db = self.database.db  # the client, for tools and tests that look at the documents
        self._threads = Threads(THREADS, "imagegen-firestore")
        self._on_thread = self._threads.run

    @classmethod
    def from_url(cls, url: str) -> FirestoreStorage:
        """firestore://PROJECT or firestore://PROJECT/DATABASE."""
        rest = url.removeprefix("firestore://")
        project, _, database = rest.partition("/")
        if not project or "/" in database:
            raise InvalidInput(f"Invalid Firestore URL '{url}': use firestore://PROJECT[/DATABASE]")
        return cls(project, database or "(default)")

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
        await self._on_thread(self.database.ping)

    async def listen(self, on_job: Callable[[], None], on_done: Callable[[str], None]) -> None:
        """Returns at once: Firestore processes poll (and Cloud Functions run their job inline)."""

    async def close(self) -> None:
        await self._on_thread(self.database.close)
        self._threads.close()

    # -- catalog ----------------------------------------------------------------------------
    async def catalog(self) -> Catalog:
        return await self._on_thread(self.database.catalog)

    async def config_snapshot(self) -> tuple[str, Catalog]:
        return await self._on_thread(self.database.config_snapshot)

    async def config_version(self) -> str:
        return await self._on_thread(self.database.config_version)

    async def model_settings(self, name: str) -> ModelSettings | None:
        return await self._on_thread(self.database.model_settings, name)

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
        return await self._on_thread(self.database.get_user, user_id)

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
        return await self._on_thread(self.database.ledger, user_id, limit, cursor, where)

    async def ledger_totals(self, user_id: str) -> dict[EntryType, int]:
        return await self._on_thread(self.database.ledger_totals, user_id)

    # -- generation requests ----------------------------------------------------------------
    async def debit_and_enqueue(
        self, new: NewGeneration, config_version: str | None = None, claim: Lease | None = None
    ) -> tuple[GenerationRequest, bool]:
        return await self._on_thread(self.database.debit_and_enqueue, new, config_version, claim)

    async def get_request(self, request_id: str) -> GenerationRequest | None:
        return await self._on_thread(self.database.get_request, request_id)

    async def list_requests(
        self, user_id: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> Page[GenerationRequest]:
        return await self._on_thread(self.database.list_requests, user_id, status, limit, cursor)

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
        return await self._on_thread(self.database.queues, now)

    # -- api keys ---------------------------------------------------------------------------
    async def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
        return await self._on_thread(self.database.add_api_key, key_id, key_hash, user_id, now)

    async def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        return await self._on_thread(self.database.revoke_api_key, key_id, now)

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        return await self._on_thread(self.database.find_api_key, key_hash)

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
        return await self._on_thread(self.database.get_meta, key)

    async def put_meta_once(self, key: str, value: str) -> str:
        return await self._on_thread(self.database.put_meta_once, key, value)

    # -- reports ----------------------------------------------------------------------------
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
        return await self._on_thread(self.database.get_report, report_id)

    async def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
        return await self._on_thread(self.database.list_reports, limit, cursor)

    # -- the scheduler ----------------------------------------------------------------------
    async def claim_scheduled_run(
        self, period_id: str, owner: str, now: datetime, stale_before: datetime
    ) -> bool:
        return await self._on_thread(self.database.claim_scheduled_run, period_id, owner, now, stale_before)

    async def finish_scheduled_run(self, period_id: str, now: datetime) -> None:
        await self._on_thread(self.database.finish_scheduled_run, period_id, now)

    async def last_scheduled_run(self) -> str | None:
        return await self._on_thread(self.database.last_scheduled_run)

    # -- audit, import and export -----------------------------------------------------------
    async def violations(self) -> list[Violation]:
        return await self._on_thread(self.database.violations)

    async def export_records(self) -> AsyncIterator[dict[str, Any]]:
        """The records, read on a thread a chunk at a time."""
        async for record in self._threads.iterate(self.database.export_records()):
            yield record

    async def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
        return await self._on_thread(self.database.import_records, records, now)
