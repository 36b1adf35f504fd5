"""The ports the service layer is written against: small Protocols in the domain's words.

An adapter (SQL today; Firestore next) implements `Storage`; each method is one atomic use of the
database, so that a document store without multi-statement SQL can keep the same guarantees.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.generation import GenerationRequest, GenerationSpec, Status
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.domain.reports import GroupCount


@dataclass(frozen=True)
class User:
    id: str
    credits: int
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: str | None  # None: an admin key
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.user_id is None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class NewGeneration:
    """A validated, priced request, ready to be debited and queued."""

    id: str
    spec: GenerationSpec
    cost: int
    created_at: datetime
    idempotency_key: str | None = None
    fingerprint: str | None = None  # a hash of the body, to tell a replay from a reused key
    webhook: str | None = None
    webhook_events: frozenset[str] = frozenset()
    max_in_flight: int | None = None  # refuse (429) when the user already has this many queued or running


@dataclass(frozen=True)
class LedgerFilter:
    types: frozenset[EntryType] = frozenset()
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


NO_FILTER = LedgerFilter()


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class Idempotency:
    """What to do with a request carrying an Idempotency-Key: run it, replay, or wait (in flight)."""

    state: str  # "new" | "replay" | "busy"
    response: StoredResponse | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    id: str
    generation_request_id: str
    event: str
    url: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Violation:
    invariant: int
    subject: str
    message: str


class Storage(Protocol):
    # lifecycle
    def migrate(self) -> None: ...
    def load_initial_data(
        self,
        catalog: Catalog,
        users: dict[str, int],
        keys: list[tuple[str, str, str | None]],
        now: datetime,
    ) -> bool: ...
    def ping(self) -> None: ...
    def listen(
        self, on_job: Callable[[], None], on_done: Callable[[str], None], stop: threading.Event
    ) -> None: ...
    def close(self) -> None: ...

    # catalog
    def catalog(self) -> Catalog: ...
    def model_settings(self, name: str) -> ModelSettings | None:
        """One model's settings as stored now (what a job reads before it generates)."""

    def put_model(self, model: ModelSettings) -> None: ...
    def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None: ...

    # users and credits
    def create_user(self, user_id: str, credits: int, now: datetime) -> User: ...
    def get_user(self, user_id: str) -> User | None: ...
    def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry: ...
    def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]: ...
    def ledger_totals(self, user_id: str) -> dict[EntryType, int]: ...

    # generation requests and jobs
    def debit_and_enqueue(self, new: NewGeneration) -> tuple[GenerationRequest, bool]: ...
    def get_request(self, request_id: str) -> GenerationRequest | None: ...
    def list_requests(
        self, user_id: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> Page[GenerationRequest]: ...
    def claim_job(self, worker_id: str, now: datetime, lease_until: datetime) -> GenerationRequest | None: ...
    def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int: ...
    def complete(self, request_id: str, worker_id: str, image_url: str, now: datetime) -> bool: ...
    def fail_and_refund(
        self,
        request_id: str,
        error: str,
        now: datetime,
        *,
        worker_id: str | None = None,
        lease_expired: bool = False,
    ) -> bool: ...
    def cancel_and_refund(self, request_id: str, now: datetime) -> bool: ...
    def expired_jobs(self, now: datetime) -> list[GenerationRequest]: ...
    def requeue(self, request_id: str, now: datetime) -> bool: ...

    # api keys
    def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey: ...
    def revoke_api_key(self, key_id: str, now: datetime) -> bool: ...
    def find_api_key(self, key_hash: str) -> ApiKey | None: ...

    # idempotency keys (responses kept for replay; see api/idempotency.py)
    def begin_idempotent(
        self, scope: str, key: str, fingerprint: str, now: datetime, lock_until: datetime
    ) -> Idempotency: ...
    def finish_idempotent(self, scope: str, key: str, response: StoredResponse) -> None: ...
    def release_idempotent(self, scope: str, key: str) -> None: ...
    def purge_idempotency(self, created_before: datetime) -> int: ...

    # webhooks (an outbox written in the same transaction as the state change it reports)
    def claim_webhooks(self, now: datetime, lease_until: datetime, limit: int) -> list[WebhookDelivery]: ...
    def webhook_delivered(self, delivery_id: str, now: datetime) -> None: ...
    def webhook_failed(self, delivery_id: str, error: str, retry_at: datetime | None) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def put_meta_once(self, key: str, value: str) -> str: ...

    # reports
    def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]: ...
    def unique_users(self, start: datetime, end: datetime) -> int: ...
    def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None: ...
    def get_report(self, report_id: str) -> dict[str, Any] | None: ...
    def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]: ...
    def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]: ...
    def earliest_request_at(self) -> datetime | None: ...

    # the scheduler: each scheduled period is claimed once, by one process
    def claim_scheduled_run(
        self, period_id: str, owner: str, now: datetime, stale_before: datetime
    ) -> bool: ...
    def finish_scheduled_run(self, period_id: str, now: datetime) -> None: ...
    def last_scheduled_run(self) -> str | None: ...

    # audit, import and export
    def violations(self) -> Iterator[Violation]: ...
    def export_records(self) -> Iterator[dict[str, Any]]: ...
    def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]: ...


class ImageStore(Protocol):
    def put(self, image_id: str, png: bytes) -> str: ...
    def open(self, image_id: str) -> bytes | None: ...


@runtime_checkable
class ReadsOnLoop(Protocol):
    """A storage whose reads an event loop may run itself (the SQL adapter, on SQLite).

    Inside `reading_on_loop()`, the calling thread's reads either run at once or raise ReaderBusy
    (having done nothing); `reads_on_loop` says whether this storage does it at all.
    """

    @property
    def reads_on_loop(self) -> bool: ...
    def reading_on_loop(self) -> AbstractContextManager[None]: ...


class ConfigSource(Protocol):
    """Where a process's cache of the catalog and the keys reads them (see imagegen.config_cache).

    The version changes with every edit of the catalog or the models and every key revocation.
    """

    def config_version(self) -> str: ...
    def config_snapshot(self) -> tuple[str, Catalog]: ...
    def find_api_key(self, key_hash: str) -> ApiKey | None: ...


@runtime_checkable
class GroupCommitted(ConfigSource, Protocol):
    """A storage whose creates can be queued for a group-committing writer (the SQL adapter).

    The HTTP create path then runs without a thread of its own: it prices and authorizes from a
    process-wide cache (`config_snapshot`) and awaits the debit's future. The version it passes
    makes the debit refuse (StaleConfig) if the catalog or the keys changed since the cache was read.
    """

    def submit_debit(
        self, new: NewGeneration, config_version: str | None = None
    ) -> Future[tuple[GenerationRequest, bool]]: ...
    def debit_from_loop(
        self, new: NewGeneration, config_version: str | None = None
    ) -> Awaitable[tuple[GenerationRequest, bool]]: ...


@runtime_checkable
class ClaimsOnCreate(ConfigSource, Protocol):
    """A storage whose create can hand the new job straight to its creator (the Firestore adapter).

    A Cloud Function keeps no worker after it answers, so the invocation that creates a request
    runs its job: created already running under `worker_id`'s lease, it needs no claim. A replay of
    an Idempotency-Key returns (the first request, False), claimed by whoever created it. With
    `config_version` the debit refuses (StaleConfig) if the catalog or the keys changed since.
    """

    def debit_and_claim(
        self, new: NewGeneration, worker_id: str, lease_until: datetime, config_version: str | None = None
    ) -> tuple[GenerationRequest, bool]: ...
