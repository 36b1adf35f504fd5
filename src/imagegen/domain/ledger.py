"""Ledger entries: every change of a user's credits is one entry, and the balance is their sum.

Invariant 1 of DESIGN.md: credits = grants + refunds + adjustments - deductions, and credits >= 0.
Entries store a signed `delta`; the case study's `credits` field is its magnitude, except for an
adjustment, which keeps its sign (an operator may take credits away).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from imagegen.domain.errors import IdempotencyConflict, ImagegenError, InsufficientCredits, TooManyRequests


class Refusal(StrEnum):
    IN_FLIGHT = "in_flight"  # the user's in-flight limit: 429, retry later
    CREDITS = "credits"  # not enough credits: 402 (400 on the case-study routes)


def debit_refusal(credits: int, in_flight: int, cost: int, max_in_flight: int | None) -> Refusal | None:
    """Why a create's debit of `cost` is refused, judged on the user's row as the debit saw it.

    The in-flight limit comes first whenever it is reached, on every backend: its 429 asks the
    client to retry, and a request that ends may also refund what it cost.
    """
    if max_in_flight is not None and in_flight >= max_in_flight:
        return Refusal.IN_FLIGHT
    if credits < cost:
        return Refusal.CREDITS
    return None


class EntryType(StrEnum):
    DEDUCTION = "deduction"
    REFUND = "refund"
    GRANT = "grant"
    ADJUSTMENT = "adjustment"


def debit_refused(
    refusal: Refusal, user_id: str, *, cost: int, in_flight: int, max_in_flight: int | None
) -> ImagegenError:
    """The error for a create refused by `domain.ledger.debit_refusal`, the same from every backend."""
    if refusal is Refusal.IN_FLIGHT:
        return TooManyRequests(
            f"User {user_id} already has {in_flight} generations queued or running (limit {max_in_flight})",
            retry_after=1,
            userId=user_id,
            inFlight=in_flight,
            limit=max_in_flight,
        )
    return InsufficientCredits("Insufficient credits", userId=user_id, required=cost)


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    user_id: str
    type: EntryType
    delta: int
    balance_after: int | None
    generation_request_id: str | None
    reason: str | None
    timestamp: datetime

    @property
    def credits(self) -> int:
        return self.delta if self.type is EntryType.ADJUSTMENT else abs(self.delta)


def signed_delta(entry_type: EntryType, credits: int) -> int:
    """The change to the balance that an entry of this type and case-study `credits` makes."""
    if entry_type is EntryType.DEDUCTION:
        return -abs(credits)
    if entry_type is EntryType.ADJUSTMENT:
        return credits
    return abs(credits)


def balance_of(deltas: list[int]) -> int:
    return sum(deltas)


@dataclass(frozen=True)
class LedgerFilter:
    types: frozenset[EntryType] = frozenset()
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


NO_FILTER = LedgerFilter()


def same_move(existing: LedgerEntry, entry_type: EntryType, delta: int) -> LedgerEntry:
    """The entry a credit move retried with its Idempotency-Key replays, if it is the same move."""
    if (existing.type, existing.delta) != (entry_type, delta):
        raise IdempotencyConflict("Idempotency-Key was already used for a different credit move")
    return existing
