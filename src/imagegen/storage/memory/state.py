"""What the in-memory adapter keeps: one record type per collection, and the state that holds them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imagegen.domain.catalog import ModelSettings
from imagegen.domain.generation import GenerationRequest
from imagegen.domain.idempotency import StoredResponse
from imagegen.domain.keys import ApiKey
from imagegen.domain.ledger import LedgerEntry
from imagegen.domain.webhooks import WebhookDelivery

OPTION_KINDS = ("styles", "colors", "sizes")


@dataclass
class UserRow:
    id: str
    credits: int
    created_at: datetime
    in_flight: int = 0  # queued or running requests


@dataclass
class RequestRow:
    """A generation request with what only storage sees: its lease, fingerprint and origin."""

    request: GenerationRequest
    fingerprint: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    imported: bool = False


@dataclass
class EntryRow:
    seq: int  # orders a user's ledger, as the SQL table's sequence does
    entry: LedgerEntry
    idempotency_key: str | None = None


@dataclass
class OptionRow:
    enabled: bool
    cost: int | None = None  # sizes only


@dataclass
class KeyRow:
    key: ApiKey
    key_hash: str


@dataclass
class IdempotencyRow:
    fingerprint: str
    created_at: datetime
    locked_until: datetime | None
    response: StoredResponse | None = None


@dataclass
class DeliveryRow:
    delivery: WebhookDelivery
    next_attempt_at: datetime
    state: str = "pending"  # pending | delivered | abandoned
    lease_expires_at: datetime | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None


@dataclass
class ReportRow:
    document: dict[str, Any]
    period_start: datetime
    period_end: datetime


@dataclass
class RunRow:
    owner: str
    claimed_at: datetime
    finished_at: datetime | None = None


@dataclass
class State:
    models: dict[str, ModelSettings] = field(default_factory=dict)
    options: dict[str, dict[str, OptionRow]] = field(default_factory=lambda: {k: {} for k in OPTION_KINDS})
    users: dict[str, UserRow] = field(default_factory=dict)
    ledger: dict[str, list[EntryRow]] = field(default_factory=dict)  # user id -> entries, oldest first
    requests: dict[str, RequestRow] = field(default_factory=dict)
    keys: dict[str, KeyRow] = field(default_factory=dict)  # key id -> key
    idempotency: dict[tuple[str, str], IdempotencyRow] = field(default_factory=dict)
    deliveries: dict[str, DeliveryRow] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    reports: dict[str, ReportRow] = field(default_factory=dict)
    runs: dict[str, RunRow] = field(default_factory=dict)
    slots: dict[tuple[str, int], tuple[str, datetime]] = field(default_factory=dict)  # -> holder, until
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def entries(self) -> list[EntryRow]:
        """Every ledger entry of every user, in the order they were written."""
        return sorted(itertools.chain.from_iterable(self.ledger.values()), key=lambda row: row.seq)

    def append(self, user: UserRow, entry: LedgerEntry, idempotency_key: str | None = None) -> None:
        self.ledger.setdefault(user.id, []).append(EntryRow(next(self.seq), entry, idempotency_key))
