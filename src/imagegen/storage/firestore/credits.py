"""Users, balances and the ledger on Firestore: every credit move is a read-check-write.

Never a blind Increment of a balance: the move reads the user's balance and ledger counter, and its
write is conditional on them (a transaction, or conditional.py), so no interleaving of clients can
overdraw a balance.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from imagegen.domain.errors import UserExists, UserNotFound
from imagegen.domain.ids import random_id
from imagegen.domain.ledger import (
    NO_FILTER,
    EntryType,
    LedgerEntry,
    LedgerFilter,
    debit_refusal,
    debit_refused,
    same_move,
)
from imagegen.domain.paging import Page, after_seq, seq_cursor
from imagegen.domain.users import User
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import run_transaction, translated
from imagegen.storage.firestore.parts import DESC, FirestoreParts, Transaction, cond


class FirestoreCredits(FirestoreParts):
    def _create_user(self, tx: Transaction, user_id: str, credits: int, now: datetime, reason: str) -> None:
        tx.create(
            self._users().document(user_id),
            {"credits": credits, "createdAt": d.aware(now), "ledgerSeq": 1 if credits else 0, "inFlight": 0},
        )
        if credits:
            entry = LedgerEntry(random_id(), user_id, EntryType.GRANT, credits, credits, None, reason, now)
            tx.create(self._ledger(user_id).document(entry.id), d.entry_doc(entry, 1))

    @translated
    def create_user(self, user_id: str, credits: int, now: datetime) -> User:
        def create(tx: Transaction) -> None:
            if self._users().document(user_id).get(transaction=tx).exists:
                raise UserExists(user_id)
            self._create_user(tx, user_id, credits, now, "opening balance")

        run_transaction(self.db, create)
        return User(user_id, credits, now)

    @translated
    def get_user(self, user_id: str) -> User | None:
        snap = self._users().document(user_id).get()
        if not snap.exists:
            return None
        data = snap.to_dict() or {}
        return User(snap.id, int(data["credits"]), d.required_utc(data["createdAt"]))

    @translated
    def find_users(self, prefix: str, limit: int) -> list[User]:
        """Ids in document-id order from `prefix` on: those with the prefix come first, together."""
        start = FieldFilter("__name__", ">=", self._users().document(prefix))
        query = self._users().where(filter=start).order_by("__name__").limit(limit)
        found = []
        for snap in query.stream():
            if not snap.id.startswith(prefix):
                break
            data = snap.to_dict() or {}
            found.append(User(snap.id, int(data["credits"]), d.required_utc(data["createdAt"])))
        return found

    @translated
    def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        def move(tx: Transaction) -> LedgerEntry:
            user = user_state(self._users().document(user_id).get(transaction=tx))
            if idempotency_key is not None:
                query = self._ledger(user_id).where(filter=cond("idempotencyKey", "==", idempotency_key))
                for snap in query.limit(1).stream(transaction=tx):
                    return same_move(d.entry_from(snap.id, user_id, snap.to_dict() or {}), entry_type, delta)
            move = CreditMove(user, entry_type, delta, None, reason, now, random_id(), idempotency_key)
            tx.update(self._users().document(user_id), move.user_changes())
            tx.create(self._ledger(user_id).document(move.entry.id), move.entry_doc)
            return move.entry

        with self._user_lock(user_id):
            return run_transaction(self.db, move)

    @translated
    def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]:
        query = self._ledger(user_id).order_by("seq", direction=DESC)
        if where.types:
            query = query.where(filter=cond("type", "in", sorted(e.value for e in where.types)))
        if cursor is not None:
            query = query.where(filter=cond("seq", "<", after_seq(cursor)))
        timed = where.since is not None or where.until is not None
        # A time window is filtered here: Firestore would have to order by the timestamp first.
        snaps = query.stream() if timed else query.limit(limit + 1).stream()
        found: list[tuple[int, LedgerEntry]] = []
        for snap in snaps:
            data = snap.to_dict() or {}
            entry = d.entry_from(snap.id, user_id, data)
            if where.since is not None and entry.timestamp < where.since:
                continue
            if where.until is not None and entry.timestamp >= where.until:
                continue
            found.append((int(data["seq"]), entry))
            if len(found) > limit:
                break
        next_cursor = seq_cursor(found[limit - 1][0]) if len(found) > limit else None
        return Page([entry for _, entry in found[:limit]], next_cursor)

    @translated
    def ledger_totals(self, user_id: str) -> dict[EntryType, int]:
        totals: dict[EntryType, int] = defaultdict(int)
        for snap in self._ledger(user_id).select(["type", "delta"]).stream():
            data = snap.to_dict() or {}
            totals[EntryType(data["type"])] += int(data["delta"])
        return dict(totals)


class UserState:
    """A user's balance, ledger counter and requests in flight, as read for one credit move."""

    __slots__ = ("id", "credits", "seq", "in_flight")

    def __init__(self, user_id: str, credits: int, seq: int, in_flight: int) -> None:
        self.id = user_id
        self.credits = credits
        self.seq = seq
        self.in_flight = in_flight


def user_state(snap: Any) -> UserState:
    if not snap.exists:
        raise UserNotFound(snap.id)
    data = snap.to_dict() or {}
    return UserState(
        snap.id, int(data["credits"]), int(data.get("ledgerSeq") or 0), int(data.get("inFlight") or 0)
    )


class CreditMove:
    """One ledger entry and the user document's new balance and counter (never below 0 credits)."""

    def __init__(
        self,
        user: UserState,
        entry_type: EntryType,
        delta: int,
        request_id: str | None,
        reason: str | None,
        now: datetime,
        entry_id: str,
        idempotency_key: str | None = None,
    ) -> None:
        refusal = debit_refusal(user.credits, user.in_flight, -delta, None)  # the domain's rule
        if refusal is not None:
            raise debit_refused(refusal, user.id, cost=-delta, in_flight=user.in_flight, max_in_flight=None)
        balance = user.credits + delta
        self.user = user
        self.seq = user.seq + 1
        self.entry = LedgerEntry(entry_id, user.id, entry_type, delta, balance, request_id, reason, now)
        self.entry_doc = d.entry_doc(self.entry, self.seq, idempotency_key)

    def user_changes(self, in_flight: int = 0) -> dict[str, Any]:
        changes: dict[str, Any] = {"credits": self.entry.balance_after, "ledgerSeq": self.seq}
        if in_flight:
            changes["inFlight"] = self.user.in_flight + in_flight
        return changes
