"""The ledger invariants checked over the in-memory state (what `imagegen verify` reports)."""

from __future__ import annotations

from collections.abc import Iterator

from imagegen.domain.audit import Violation
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.storage.memory.state import RequestRow, State


def violations(state: State) -> Iterator[Violation]:
    for user in state.users.values():
        ledger_sum = sum(row.entry.delta for row in state.ledger.get(user.id, []))
        if user.credits < 0:
            yield Violation(1, user.id, f"user {user.id} has a negative balance ({user.credits})")
        if user.credits != ledger_sum:
            message = f"user {user.id} has {user.credits} credits but the ledger sums to {ledger_sum}"
            yield Violation(1, user.id, message)
    by_request: dict[str, list[LedgerEntry]] = {}
    for row in state.entries():
        if row.entry.generation_request_id is not None:
            by_request.setdefault(row.entry.generation_request_id, []).append(row.entry)
    for request_id, request in state.requests.items():
        yield from _request_violations(request, by_request.get(request_id, []))
    for request_id, entries in by_request.items():
        if request_id not in state.requests:
            yield from _orphans(request_id, entries)


def _request_violations(row: RequestRow, entries: list[LedgerEntry]) -> Iterator[Violation]:
    request = row.request
    if row.imported and not entries:
        return  # history only: imported without any ledger entry
    deductions = [e for e in entries if e.type is EntryType.DEDUCTION]
    refunds = [e for e in entries if e.type is EntryType.REFUND]
    deducted = -sum(e.delta for e in deductions)
    refunded = sum(e.delta for e in refunds)
    expected = 1 if request.status.refunded else 0
    if (len(deductions), deducted, len(refunds), refunded) == (
        1,
        request.cost,
        expected,
        expected * request.cost,
    ):
        return
    want = "one refund" if request.status.refunded else "no refund"
    yield Violation(
        3 if len(deductions) == 1 else 2,
        request.id,
        f"request {request.id} ({request.status.value}, cost {request.cost}) has {len(deductions)} "
        f"deduction(s) of {deducted} and {len(refunds)} refund(s) of {refunded}; "
        f"expected one deduction of {request.cost} and {want}",
    )


def _orphans(request_id: str, entries: list[LedgerEntry]) -> Iterator[Violation]:
    for entry in entries:
        if entry.type in (EntryType.DEDUCTION, EntryType.REFUND):
            message = f"{entry.type.value} {entry.id} points at request {request_id}, which does not exist"
            yield Violation(2, entry.id, message)
