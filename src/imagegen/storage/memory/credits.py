"""Users, balances and the ledger in memory: each credit move checks the domain's rule and writes
its entry under the lock, so no interleaving of callers can overdraw a balance.
"""

from __future__ import annotations

from datetime import datetime

from imagegen.domain.errors import UserExists
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
from imagegen.storage.memory.parts import MemoryParts
from imagegen.storage.memory.state import UserRow


class MemoryCredits(MemoryParts):
    async def create_user(self, user_id: str, credits: int, now: datetime) -> User:
        with self._lock:
            if user_id in self._state.users:
                raise UserExists(user_id)
            self._insert_user(user_id, credits, now, "opening balance")
            return User(user_id, credits, now)

    async def get_user(self, user_id: str) -> User | None:
        with self._lock:
            user = self._state.users.get(user_id)
            return None if user is None else User(user.id, user.credits, user.created_at)

    async def find_users(self, prefix: str, limit: int) -> list[User]:
        with self._lock:
            found = sorted(u for u in self._state.users if u.startswith(prefix))[:limit]
            rows = [self._state.users[user_id] for user_id in found]
            return [User(row.id, row.credits, row.created_at) for row in rows]

    async def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        with self._lock:
            if idempotency_key is not None:
                for stored in self._state.ledger.get(user_id, []):
                    if stored.idempotency_key == idempotency_key:
                        return same_move(stored.entry, entry_type, delta)
            user = self._user(user_id)
            refusal = debit_refusal(user.credits, user.in_flight, -delta, None)  # the domain's rule
            if refusal is not None:
                raise debit_refused(
                    refusal, user_id, cost=-delta, in_flight=user.in_flight, max_in_flight=None
                )
            user.credits += delta
            return self._append(user, entry_type, delta, None, reason, now, idempotency_key=idempotency_key)

    async def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]:
        before = after_seq(cursor) if cursor is not None else None
        with self._lock:
            newest_first = reversed(self._state.ledger.get(user_id, []))
            found = [
                stored
                for stored in newest_first
                if (before is None or stored.seq < before) and _matches(stored.entry, where)
            ]
        page = found[:limit]
        next_cursor = seq_cursor(page[-1].seq) if len(found) > limit else None
        return Page([stored.entry for stored in page], next_cursor)

    async def ledger_totals(self, user_id: str) -> dict[EntryType, int]:
        totals: dict[EntryType, int] = {}
        with self._lock:
            for stored in self._state.ledger.get(user_id, []):
                totals[stored.entry.type] = totals.get(stored.entry.type, 0) + stored.entry.delta
        return totals

    def _insert_user(
        self, user_id: str, credits: int, now: datetime, reason: str, *, entry_id: str | None = None
    ) -> UserRow:
        """A new user and its opening grant, under the caller's lock."""
        user = UserRow(user_id, credits, now)
        self._state.users[user_id] = user
        self._state.ledger[user_id] = []
        if credits:
            self._append(user, EntryType.GRANT, credits, None, reason, now, entry_id=entry_id)
        return user


def _matches(entry: LedgerEntry, where: LedgerFilter) -> bool:
    if where.types and entry.type not in where.types:
        return False
    if where.since is not None and entry.timestamp < where.since:
        return False
    return where.until is None or entry.timestamp < where.until
