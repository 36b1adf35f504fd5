"""Export and import on the in-memory state, with the rules of the other adapters.

An import is idempotent by id, creates referenced-but-missing users with 0 credits, gives the users
it creates the balance their `users` line says (with one "import: opening balance" adjustment where
their entries do not add up to it), moves the balance of users that existed by their imported
entries, and is refused whole if that would take one below 0. It works on a copy of the state, which
the adapter keeps only once every line went in.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from imagegen.domain.catalog import model_from_record, model_record
from imagegen.domain.errors import InvalidInput
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.ids import new_id
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.storage.memory.state import ReportRow, RequestRow, State, UserRow

REQUEST_FIELDS = (
    "id",
    "user_id",
    "model",
    "style",
    "color",
    "size",
    "prompt",
    "cost",
    "image_url",
    "error",
    "created_at",
    "started_at",
    "completed_at",
)
COLLECTIONS = ("users", "generationRequests", "transactions", "reports", "models")


def export_records(state: State) -> Iterator[dict[str, Any]]:
    for name in sorted(state.models):
        yield model_record(state.models[name])
    for user_id in sorted(state.users):
        user = state.users[user_id]
        yield {"collection": "users", "id": user.id, "credits": user.credits, "created_at": user.created_at}
    for row in sorted(state.requests.values(), key=lambda r: (r.request.created_at, r.request.id)):
        values = {name: getattr(row.request, name) for name in REQUEST_FIELDS}
        yield {"collection": "generationRequests", **values, "status": row.request.status.value}
    for entry_row in state.entries():
        entry = entry_row.entry
        yield {
            "collection": "transactions",
            "id": entry.id,
            "user_id": entry.user_id,
            "type": entry.type.value,
            "delta": entry.delta,
            "balance_after": entry.balance_after,
            "generation_request_id": entry.generation_request_id,
            "reason": entry.reason,
            "created_at": entry.timestamp,
        }
    for report_id, report in sorted(state.reports.items(), key=lambda item: (item[1].period_start, item[0])):
        yield {"collection": "reports", "id": report_id, "document": copy.deepcopy(report.document)}


class Import:
    """Applies an import's records to `state` (a copy the caller keeps only if this succeeds)."""

    def __init__(self, state: State, now: datetime) -> None:
        self.state = state
        self.now = now
        self.counts = {name: 0 for name in COLLECTIONS} | {"usersCreatedAsReferenced": 0}
        self.targets: dict[str, int] = {}  # users this import creates -> the balance they end with
        self.moved: dict[str, int] = {}  # users that existed -> the deltas of their imported entries
        self.unfinished: list[str] = []  # imported pending or running requests
        entries = [row.entry for row in state.entries()]
        self.entry_ids = {entry.id for entry in entries}
        self.per_request = {(e.generation_request_id, e.type) for e in entries if e.generation_request_id}

    def run(self, records: Iterable[dict[str, Any]]) -> dict[str, int]:
        handlers = {
            "users": self._user,
            "generationRequests": self._request,
            "transactions": self._entry,
            "reports": self._report,
            "models": self._model,
        }
        for record in records:
            handlers[record["collection"]](record)
        self._settle_balances()
        self._settle_unfinished()
        return self.counts

    def _model(self, record: dict[str, Any]) -> None:
        """A models line replaces the stored model (a binding and prices must survive a move)."""
        model = model_from_record(record)
        if self.state.models.get(model.name) != model:
            self.state.models[model.name] = model
            self.counts["models"] += 1

    def _user(self, record: dict[str, Any]) -> None:
        user_id = record["id"]
        if user_id in self.targets:  # created earlier in this import, perhaps as a reference
            self.targets[user_id] = record["credits"]
        elif user_id not in self.state.users:
            self._create(user_id, record.get("created_at") or self.now)
            self.targets[user_id] = record["credits"]
            self.counts["users"] += 1

    def _referenced(self, user_id: str) -> None:
        if user_id not in self.state.users:
            self._create(user_id, self.now)
            self.targets[user_id] = 0
            self.counts["usersCreatedAsReferenced"] += 1

    def _create(self, user_id: str, created_at: datetime) -> None:
        self.state.users[user_id] = UserRow(user_id, 0, created_at)
        self.state.ledger[user_id] = []

    def _request(self, record: dict[str, Any]) -> None:
        self._referenced(record["user_id"])
        if record["id"] in self.state.requests:
            return
        values: dict[str, Any] = {name: record.get(name) for name in REQUEST_FIELDS}
        values["prompt"] = values["prompt"] or ""
        request = GenerationRequest(**values, status=Status(record["status"]), attempts=0)
        self.state.requests[request.id] = RequestRow(request, imported=True)
        if request.status in (Status.PENDING, Status.RUNNING):
            self.unfinished.append(request.id)
        self.counts["generationRequests"] += 1

    def _entry(self, record: dict[str, Any]) -> None:
        user_id = record["user_id"]
        self._referenced(user_id)
        if record["id"] in self.entry_ids:
            return
        entry = LedgerEntry(
            record["id"],
            user_id,
            EntryType(record["type"]),
            record["delta"],
            record.get("balance_after"),
            record.get("generation_request_id"),
            record.get("reason"),
            record["created_at"],
        )
        if entry.generation_request_id is not None:
            # One deduction and one refund per request at most, as the SQL unique index holds.
            if (entry.generation_request_id, entry.type) in self.per_request:
                request_id = entry.generation_request_id
                raise InvalidInput(f"import refused: a second {entry.type.value} for request {request_id}")
            self.per_request.add((entry.generation_request_id, entry.type))
        self.entry_ids.add(entry.id)
        self.state.append(self.state.users[user_id], entry)
        if user_id not in self.targets:
            self.moved[user_id] = self.moved.get(user_id, 0) + entry.delta
        self.counts["transactions"] += 1

    def _report(self, record: dict[str, Any]) -> None:
        if record["id"] in self.state.reports:
            return
        document = copy.deepcopy(record["document"])
        self.state.reports[record["id"]] = ReportRow(document, record["period_start"], record["period_end"])
        self.counts["reports"] += 1

    def _settle_balances(self) -> None:
        for user_id, target in self.targets.items():
            user = self.state.users[user_id]
            ledger_sum = sum(row.entry.delta for row in self.state.ledger[user_id])
            if ledger_sum != target:
                reason = "import: opening balance"
                adjustment = LedgerEntry(
                    new_id(),
                    user_id,
                    EntryType.ADJUSTMENT,
                    target - ledger_sum,
                    target,
                    None,
                    reason,
                    self.now,
                )
                self.state.append(user, adjustment)
            user.credits = target
        for user_id, delta in self.moved.items():
            user = self.state.users[user_id]
            if user.credits + delta < 0:
                raise InvalidInput(f"import refused: its entries would take user {user_id} below 0 credits")
            user.credits += delta

    def _settle_unfinished(self) -> None:
        """Debited unfinished requests are queued again; ones never debited are closed, not run.

        A request that was running when it was exported has no live worker here; one that was never
        debited must not become a job whose failure would refund credits nobody paid.
        """
        for request_id in sorted(self.unfinished):
            row = self.state.requests[request_id]
            debited = (request_id, EntryType.DEDUCTION) in self.per_request
            row.lease_owner = row.lease_expires_at = None
            if debited:
                row.request = replace(row.request, status=Status.PENDING)
                self.state.users[row.request.user_id].in_flight += 1
            else:
                error = "imported unfinished without a deduction: not run"
                row.request = replace(row.request, status=Status.FAILED, error=error, completed_at=self.now)
