"""The ports the service layer is written against: small async Protocols in the domain's words.

Each port is one concern (credits, generations, jobs, keys, ...); a use case asks for the ports it
uses, and an adapter (SQL, Firestore, memory) implements them all, usually in one class. Every
method is one atomic use of the database, so that a document store without multi-statement SQL
keeps the same guarantees.

The service layer runs on an event loop and awaits these methods. How a call really runs (on the
loop itself, batched for a writer thread, pipelined on a connection, on a thread pool) is decided
inside the adapter, once, when it is built: nothing here names a thread, a future or a lock, and
no caller asks which kind of storage it holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

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


@dataclass(frozen=True)
class Lease:
    """Who runs a job, and until when, unless the lease is extended (a worker's claim)."""

    worker_id: str
    until: datetime


class Database(Protocol):
    """The database as a whole: its schema, its first data, whether it answers, its wake-ups."""

    async def migrate(self) -> None: ...
    async def load_initial_data(
        self,
        catalog: Catalog,
        users: dict[str, int],
        keys: list[tuple[str, str, str | None]],
        now: datetime,
    ) -> bool:
        """Loads the initial data set once per database; False if it was loaded before."""

    async def ping(self) -> None: ...
    async def listen(self, on_job: Callable[[], None], on_done: Callable[[str], None]) -> None:
        """Calls `on_job()` when another process queued a job and `on_done(request_id)` when one
        ended, until canceled; returns at once where other processes cannot be heard."""

    async def close(self) -> None: ...


class CatalogStore(Protocol):
    """The models, styles, colors and sizes, and the version that changes with every edit of them
    or of the keys (a create priced from an older version is refused with StaleConfig)."""

    async def catalog(self) -> Catalog: ...
    async def config_snapshot(self) -> tuple[str, Catalog]:
        """The configuration version and the catalog, read together."""

    async def config_version(self) -> str: ...
    async def model_settings(self, name: str) -> ModelSettings | None:
        """One model's settings as stored now (what a job reads before it generates)."""

    async def put_model(self, model: ModelSettings) -> None: ...
    async def update_model(
        self, name: str, change: Callable[[ModelSettings | None], ModelSettings]
    ) -> ModelSettings:
        """Reads model `name` (None if it is not in the catalog) and writes `change(current)` in
        one transaction, so that two edits of one model (its settings, binding, prices) never
        lose one another. `change` is pure and may run more than once; what it raises is raised,
        with nothing written. A change that changes nothing writes nothing."""

    async def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None: ...


class Credits(Protocol):
    """Users, their balances and the ledger every credit move writes."""

    async def create_user(self, user_id: str, credits: int, now: datetime) -> User: ...
    async def get_user(self, user_id: str) -> User | None: ...
    async def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry: ...
    async def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]: ...
    async def ledger_totals(self, user_id: str) -> dict[EntryType, int]: ...


class Generations(Protocol):
    """Generation requests as their users see them: created with their debit, read, canceled."""

    async def debit_and_enqueue(
        self, new: NewGeneration, config_version: str | None = None, claim: Lease | None = None
    ) -> tuple[GenerationRequest, bool]:
        """Debits the cost and queues the request in one transaction: (request, True); for a
        replayed Idempotency-Key (the first request, False). Refuses with the domain's debit
        refusal (decided by `domain.credits.debit_refusal`), StaleConfig if `config_version` is
        given and no longer current, IdempotencyConflict for a reused key. With `claim` the request
        is created already running under that lease (a Cloud Function runs the job it creates)."""

    async def get_request(self, request_id: str) -> GenerationRequest | None: ...
    async def list_requests(
        self, user_id: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> Page[GenerationRequest]: ...
    async def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        """Cancels a pending request and refunds it; False if it was not pending."""


class Jobs(Protocol):
    """The queue workers take jobs from, and the moves that end a job (a refund at most once)."""

    async def claim_job(
        self, lease: Lease, now: datetime, models: Collection[str] | None = None
    ) -> GenerationRequest | None:
        """Starts the oldest pending job (of one of `models`, when given) under `lease`."""

    async def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int:
        """Extends the leases of {request id: worker id} still held; how many were."""

    async def complete(self, request_id: str, worker_id: str, image_url: str, now: datetime) -> bool: ...
    async def fail_and_refund(
        self,
        request_id: str,
        error: str,
        now: datetime,
        *,
        worker_id: str | None = None,
        lease_expired: bool = False,
    ) -> bool: ...
    async def expired_jobs(self, now: datetime) -> list[GenerationRequest]: ...
    async def requeue(self, request_id: str, now: datetime) -> bool: ...
    async def queues(self, now: datetime) -> list[ModelQueue]:
        """Per model with jobs pending or running: their counts and the oldest pending one."""


class Keys(Protocol):
    """API keys, stored hashed; a revocation changes the configuration version."""

    async def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey: ...
    async def revoke_api_key(self, key_id: str, now: datetime) -> bool: ...
    async def find_api_key(self, key_hash: str) -> ApiKey | None: ...
    async def list_api_keys(self, user_id: str | None) -> list[ApiKey]:
        """A user's keys, revoked ones included, oldest first; None: every key, admin keys too."""

    async def record_key_uses(self, used: dict[str, datetime]) -> None:
        """Each key's last use, moved forward only; the configuration version stays as it is."""


class IdempotencyStore(Protocol):
    """Responses kept for replay under a client's Idempotency-Key (see api/idempotency.py)."""

    async def begin_idempotent(
        self, scope: str, key: str, fingerprint: str, now: datetime, lock_until: datetime
    ) -> Idempotency: ...
    async def finish_idempotent(self, scope: str, key: str, response: StoredResponse) -> None: ...
    async def release_idempotent(self, scope: str, key: str) -> None: ...
    async def purge_idempotency(self, created_before: datetime) -> int: ...


class Outbox(Protocol):
    """Webhook deliveries, written in the same transaction as the state change they report."""

    async def claim_webhooks(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[WebhookDelivery]: ...
    async def webhook_delivered(self, delivery_id: str, now: datetime) -> None: ...
    async def webhook_failed(self, delivery_id: str, error: str, retry_at: datetime | None) -> None: ...
    async def get_meta(self, key: str) -> str | None: ...
    async def put_meta_once(self, key: str, value: str) -> str:
        """Stores `value` under `key` unless one is there; the value that is kept."""


class Reports(Protocol):
    """The aggregations a weekly report is made of, and the reports themselves."""

    async def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]: ...
    async def unique_users(self, start: datetime, end: datetime) -> int: ...
    async def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]: ...
    async def earliest_request_at(self) -> datetime | None: ...
    async def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None: ...
    async def get_report(self, report_id: str) -> dict[str, Any] | None: ...
    async def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]: ...


class Schedule(Protocol):
    """Each scheduled period is claimed once, by one process."""

    async def claim_scheduled_run(
        self, period_id: str, owner: str, now: datetime, stale_before: datetime
    ) -> bool: ...
    async def finish_scheduled_run(self, period_id: str, now: datetime) -> None: ...
    async def last_scheduled_run(self) -> str | None: ...


class Transfer(Protocol):
    """Audit, export and import: the whole ledger checked, written out, read back in."""

    async def violations(self) -> list[Violation]: ...
    def export_records(self) -> AsyncIterator[dict[str, Any]]: ...
    async def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]: ...


class Storage(
    Database,
    CatalogStore,
    Credits,
    Generations,
    Jobs,
    Keys,
    IdempotencyStore,
    Outbox,
    Reports,
    Schedule,
    Transfer,
    Protocol,
):
    """Every port at once: what an adapter builds and the composition root hands out."""


class ImageStore(Protocol):
    """Where finished images are kept (a folder, S3, Cloud Storage)."""

    async def put(self, image_id: str, png: bytes) -> str: ...
    async def open(self, image_id: str) -> bytes | None: ...
