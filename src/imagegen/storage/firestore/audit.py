"""Invariants 1-3 audited over a whole Firestore database, with the SQL adapter's messages.

Firestore has no joins: one pass reads every user and its ledger (summing deltas and noting each
request's deductions and refunds), a second reads every request (status, cost, source). Memory grows
with the number of requests that have ledger entries; reads are one per document.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.cloud import firestore

from imagegen.domain.audit import Violation
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.storage.firestore import docs as d


@dataclass
class _Entries:
    deductions: int = 0
    deducted: int = 0
    refunds: int = 0
    refunded: int = 0
    ids: list[tuple[str, str]] = field(default_factory=list)  # (entry id, type)


def violations(db: firestore.Client) -> Iterator[Violation]:
    by_request: dict[str, _Entries] = {}
    for user in db.collection(d.USERS).select(["credits"]).stream():
        credits = int((user.to_dict() or {})["credits"])
        ledger_sum = 0
        ledger = user.reference.collection(d.TRANSACTIONS)
        for snap in ledger.select(["type", "delta", "generationRequestId"]).stream():
            data = snap.to_dict() or {}
            ledger_sum += int(data["delta"])
            _note(by_request, snap.id, data)
        if credits < 0:
            yield Violation(1, user.id, f"user {user.id} has a negative balance ({credits})")
        if credits != ledger_sum:
            yield Violation(
                1, user.id, f"user {user.id} has {credits} credits but the ledger sums to {ledger_sum}"
            )
    for request in db.collection(d.REQUESTS).select(["status", "cost", "source"]).stream():
        violation = _request_violation(request.id, request.to_dict() or {}, by_request.pop(request.id, None))
        if violation is not None:
            yield violation
    for request_id, entries in by_request.items():  # what is left points at no request
        for entry_id, entry_type in entries.ids:
            yield Violation(
                2, entry_id, f"{entry_type} {entry_id} points at request {request_id}, which does not exist"
            )


def _note(by_request: dict[str, _Entries], entry_id: str, data: dict[str, Any]) -> None:
    request_id = data.get("generationRequestId")
    entry_type = data.get("type")
    if request_id is None or entry_type not in (EntryType.DEDUCTION.value, EntryType.REFUND.value):
        return
    entries = by_request.setdefault(request_id, _Entries())
    entries.ids.append((entry_id, entry_type))
    if entry_type == EntryType.DEDUCTION.value:
        entries.deductions += 1
        entries.deducted += -int(data["delta"])
    else:
        entries.refunds += 1
        entries.refunded += int(data["delta"])


def _request_violation(request_id: str, data: dict[str, Any], found: _Entries | None) -> Violation | None:
    status = Status(data["status"])
    cost = int(data["cost"])
    entries = found or _Entries()
    if found is None and data.get("source") == "import":
        return None  # imported history without its ledger
    expected_refunds = 1 if status.refunded else 0
    healthy = (
        entries.deductions == 1
        and entries.deducted == cost
        and entries.refunds == expected_refunds
        and entries.refunded == expected_refunds * cost
    )
    if healthy:
        return None
    invariant = 3 if entries.deductions == 1 else 2
    want = "one refund" if status.refunded else "no refund"
    return Violation(
        invariant,
        request_id,
        f"request {request_id} ({status.value}, cost {cost}) has {entries.deductions} deduction(s) "
        f"of {entries.deducted} and {entries.refunds} refund(s) of {entries.refunded}; "
        f"expected one deduction of {cost} and {want}",
    )
