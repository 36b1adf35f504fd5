"""Users, balances and the ledger: each credit move is one conditional UPDATE and its entry.

`credits = credits + delta WHERE credits + delta >= 0`: no interleaving of clients can overdraw a
balance; the entry is written in the same transaction, with the balance the UPDATE returned.
Every function runs inside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError

from imagegen.domain.errors import (
    UserExists,
    UserNotFound,
)
from imagegen.domain.ids import new_id
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
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.parts import SqlParts
from imagegen.storage.sql.rows import entry_from


def find_user(conn: Connection, user_id: str) -> User | None:
    row = conn.execute(sql.GET_USER, {"p_user": user_id}).first()
    return None if row is None else User(row.id, row.credits, row.created_at)


def insert_user(
    conn: Connection, user_id: str, credits: int, now: datetime, *, reason: str, entry_id: str | None = None
) -> None:
    conn.execute(insert(t.users).values(id=user_id, credits=credits, created_at=now))
    if credits:
        append_entry(conn, user_id, EntryType.GRANT, credits, credits, None, reason, now, entry_id=entry_id)


def record_move(
    conn: Connection,
    user_id: str,
    entry_type: EntryType,
    delta: int,
    reason: str | None,
    now: datetime,
    idempotency_key: str | None,
) -> LedgerEntry:
    if idempotency_key is not None:
        existing = entry_by_key(conn, user_id, idempotency_key)
        if existing is not None:
            return same_move(existing, entry_type, delta)
    balance = add_credits(conn, user_id, delta)
    return append_entry(conn, user_id, entry_type, delta, balance, None, reason, now, idempotency_key)


def add_credits(
    conn: Connection, user_id: str, delta: int, *, in_flight: int = 0, max_in_flight: int | None = None
) -> int:
    """Moves a balance by `delta` unless that would take it below 0; returns the new balance.

    `in_flight` moves the user's count of queued and running requests in the same statement, and
    `max_in_flight` refuses the move when the count is already there: one conditional UPDATE, so
    no interleaving of clients can overdraw a balance or exceed the limit.
    """
    params: dict[str, Any] = {"p_user": user_id, "p_delta": delta, "p_in_flight": in_flight}
    statement = sql.MOVE_CREDITS_FAST
    if max_in_flight is not None:
        statement, params = sql.MOVE_CREDITS_LIMITED_FAST, {**params, "p_max_in_flight": max_in_flight}
    row = statement.execute(conn, params).fetchone()
    if row is None:
        refuse(conn, user_id, delta, max_in_flight)
        # The row, now locked, allows the move (a job ended since the UPDATE looked): run it again.
        row = statement.execute(conn, params).fetchone()
        assert row is not None, "a locked row that allows the move refused it"
    return int(row[0])


def refuse(conn: Connection, user_id: str, delta: int, max_in_flight: int | None) -> None:
    """Why a conditional UPDATE moved nothing: no such user, the in-flight limit, or the balance.

    Decided on the row locked for the rest of the transaction, so that a job that ended between
    the UPDATE and this read cannot turn an in-flight refusal into "insufficient credits": if the
    row allows the move now, this returns and the caller runs it again (on the same locked row).
    """
    user = conn.execute(sql.USER_STATE, {"p_user": user_id}).first()
    if user is None:
        raise UserNotFound(user_id)
    refusal = debit_refusal(user.credits, user.in_flight, -delta, max_in_flight)
    if refusal is not None:
        raise debit_refused(
            refusal, user_id, cost=-delta, in_flight=user.in_flight, max_in_flight=max_in_flight
        )


def append_entry(
    conn: Connection,
    user_id: str,
    entry_type: EntryType,
    delta: int,
    balance_after: int,
    request_id: str | None,
    reason: str | None,
    now: datetime,
    idempotency_key: str | None = None,
    entry_id: str | None = None,
) -> LedgerEntry:
    entry_id = entry_id or new_id()
    entry = LedgerEntry(entry_id, user_id, entry_type, delta, balance_after, request_id, reason, now)
    sql.INSERT_ENTRY_FAST.execute(
        conn,
        {
            "id": entry.id,
            "user_id": user_id,
            "type": entry_type.value,
            "delta": delta,
            "balance_after": balance_after,
            "generation_request_id": request_id,
            "reason": reason,
            "created_at": now,
            "idempotency_key": idempotency_key,
        },
    )
    return entry


def entry_by_key(conn: Connection, user_id: str, key: str) -> LedgerEntry | None:
    query = select(t.ledger).where(t.ledger.c.user_id == user_id, t.ledger.c.idempotency_key == key)
    row = conn.execute(query).first()
    return None if row is None else entry_from(row)


def ledger_page(
    conn: Connection, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
) -> Page[LedgerEntry]:
    if where == NO_FILTER:  # the common page: a prebuilt statement
        query: Any = sql.LEDGER_PAGE if cursor is None else sql.LEDGER_PAGE_AFTER
        params = {"p_user": user_id, "p_limit": limit + 1}
        if cursor is not None:
            params["p_seq"] = after_seq(cursor)
        rows = conn.execute(query, params).all()
    else:
        query = select(t.ledger).where(t.ledger.c.user_id == user_id)
        if where.types:
            query = query.where(t.ledger.c.type.in_(sorted(e.value for e in where.types)))
        if where.since is not None:
            query = query.where(t.ledger.c.created_at >= where.since)
        if where.until is not None:
            query = query.where(t.ledger.c.created_at < where.until)
        if cursor is not None:
            query = query.where(t.ledger.c.seq < after_seq(cursor))
        rows = conn.execute(query.order_by(t.ledger.c.seq.desc()).limit(limit + 1)).all()
    next_cursor = seq_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return Page([entry_from(row) for row in rows[:limit]], next_cursor)


def totals_of(conn: Connection, user_id: str) -> dict[EntryType, int]:
    rows = conn.execute(sql.LEDGER_TOTALS, {"p_user": user_id})
    return {EntryType(kind): int(total) for kind, total in rows}


class SqlCredits(SqlParts):
    @retrying
    def create_user(self, user_id: str, credits: int, now: datetime) -> User:
        try:
            with self.tx.write() as conn:
                insert_user(conn, user_id, credits, now, reason="opening balance")
        except IntegrityError as exc:
            raise UserExists(user_id) from exc
        return User(user_id, credits, now)

    @retrying
    def get_user(self, user_id: str) -> User | None:
        with self.tx.read() as conn:
            return find_user(conn, user_id)

    @retrying
    def find_users(self, prefix: str, limit: int) -> list[User]:
        """A scan of the users (substr, not LIKE: SQLite's LIKE ignores case), for the console."""
        query = (
            select(t.users.c.id, t.users.c.credits, t.users.c.created_at)
            .where(func.substr(t.users.c.id, 1, len(prefix)) == prefix)
            .order_by(t.users.c.id)
            .limit(limit)
        )
        with self.tx.read() as conn:
            return [User(*row) for row in conn.execute(query).all()]

    @retrying
    def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        try:
            with self.tx.write() as conn:
                return record_move(conn, user_id, entry_type, delta, reason, now, idempotency_key)
        except IntegrityError:
            if idempotency_key is None:
                raise
            with self.tx.read() as conn:  # a concurrent duplicate committed first
                existing = entry_by_key(conn, user_id, idempotency_key)
            if existing is None:
                raise
            return same_move(existing, entry_type, delta)

    @retrying
    def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]:
        with self.tx.read() as conn:
            return ledger_page(conn, user_id, limit, cursor, where)

    @retrying
    def ledger_totals(self, user_id: str) -> dict[EntryType, int]:
        with self.tx.read() as conn:
            return totals_of(conn, user_id)
