"""The ports the service layer is written against: small Protocols in the domain's words.

An adapter (SQL today; Firestore next) implements `Storage`; each method is one atomic use of the
database, so that a document store without multi-statement SQL can keep the same guarantees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

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
    def close(self) -> None: ...

    # catalog
    def catalog(self) -> Catalog: ...
    def put_model(self, model: ModelSettings) -> None: ...

    # users and credits
    def create_user(self, user_id: str, credits: int, now: datetime) -> User: ...
    def get_user(self, user_id: str) -> User | None: ...
    def move_credits(
        self, user_id: str, entry_type: EntryType, delta: int, reason: str | None, now: datetime
    ) -> LedgerEntry: ...
    def ledger(self, user_id: str, limit: int, cursor: str | None) -> Page[LedgerEntry]: ...

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

    # reports
    def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]: ...
    def unique_users(self, start: datetime, end: datetime) -> int: ...
    def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None: ...
    def get_report(self, report_id: str) -> dict[str, Any] | None: ...

    # audit, import and export
    def violations(self) -> Iterator[Violation]: ...
    def export_records(self) -> Iterator[dict[str, Any]]: ...
    def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]: ...


class ImageStore(Protocol):
    def put(self, image_id: str, png: bytes) -> str: ...
    def open(self, image_id: str) -> bytes | None: ...
