"""What differs between SQLite and PostgreSQL, in one object per database chosen when the adapter
is built (`dialect_for`), so that no storage method asks which database it runs on.

PostgreSQL pays a network round trip per statement, so its debit, claim and completion are single
statements where that is possible (CTEs, autocommit), and other processes are woken by NOTIFY.
SQLite runs in the process: several small statements cost nothing, and processes poll.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Engine, Integer, Table, cast, func
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.dml import Insert

from imagegen.domain.generation import GenerationRequest, NewGeneration
from imagegen.domain.ids import new_id
from imagegen.domain.ledger import EntryType
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql.calls import QueuedCall
from imagegen.storage.sql.credits import add_credits, append_entry, refuse
from imagegen.storage.sql.jobs import claim_in_transaction, complete_in_transaction
from imagegen.storage.sql.transactions import Transactions

if TYPE_CHECKING:
    from imagegen.storage.sql.loop_pipeline import LoopPipeline

NO_LIMIT = 2**31 - 1  # an in-flight limit that never binds (the column is a 32-bit integer)


class Dialect:
    """SQLite's ways; PostgreSQL overrides what it does differently."""

    name = "sqlite"

    def lock_migrations(self, conn: Connection) -> None:
        """Several processes may start at once; SQLite's BEGIN IMMEDIATE already serializes them."""

    def notify(self, conn: Connection, channel: str, payload: str = "") -> None:
        """Wakes other processes at commit; SQLite's processes poll instead."""

    async def listen(
        self, engine: Engine, on_job: Callable[[], None], on_done: Callable[[str], None]
    ) -> None:
        """Hears other processes until canceled; SQLite has nothing to hear (returns at once)."""

    def loop_pipeline(
        self, engine: Engine, hand_over: Callable[[list[QueuedCall[Any]]], None], max_batch: int
    ) -> LoopPipeline | None:
        """What sends the event loop's debits itself (None: SQLite's loop runs its batches in place)."""
        return None

    def debit(
        self, conn: Connection, new: NewGeneration, values: dict[str, Any]
    ) -> tuple[GenerationRequest, bool]:
        """Debits the create's cost (and takes an in-flight place), writes its request and deduction."""
        user = new.spec.user_id
        balance = add_credits(conn, user, -new.cost, in_flight=1, max_in_flight=new.max_in_flight)
        sql.INSERT_REQUEST_FAST.execute(conn, values)
        append_entry(conn, user, EntryType.DEDUCTION, -new.cost, balance, new.id, None, new.created_at)
        return new.queued(), True

    def claim_job(self, tx: Transactions, params: dict[str, Any], now: datetime) -> GenerationRequest | None:
        with tx.write() as conn:
            return claim_in_transaction(conn, params, now)

    def complete(self, tx: Transactions, params: dict[str, Any], now: datetime) -> bool:
        with tx.write() as conn:
            return complete_in_transaction(conn, self, params, now)

    def bucket_of(self, start: Any, end: Any, bucket_ms: int) -> ColumnElement[int]:
        """The histogram bucket of the time from `start` to `end`, in milliseconds / bucket_ms."""
        millis = (func.julianday(end) - func.julianday(start)) * 86_400_000.0
        return cast(millis / bucket_ms, Integer)

    def insert_new(self, table: Table) -> Insert:
        """An INSERT that skips the rows whose id is already there (imports are idempotent by id)."""
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])


def dialect_for(engine: Engine) -> Dialect:
    if engine.dialect.name == "postgresql":
        from imagegen.storage.sql.postgres import Postgres  # psycopg is imported only for PostgreSQL

        return Postgres()
    return Dialect()


def debit_row(
    new: NewGeneration, values: dict[str, Any], config_version: str | None = None
) -> dict[str, Any]:
    """A create's row for the debit statements: the balance move, the request's values, the ledger
    entry's id, and the configuration version it was priced under (None: not checked)."""
    return {
        "p_user": new.spec.user_id,
        "p_delta": -new.cost,
        "p_max_in_flight": new.max_in_flight if new.max_in_flight is not None else NO_LIMIT,
        "p_config": config_version,
        "e_id": new_id(),
        **{f"r_{name}": value for name, value in values.items()},
    }


def debit_alone(conn: Connection, new: NewGeneration, values: dict[str, Any]) -> Any:
    """Sends DEBIT_IN_ONE for one create; its cursor has a row if it debited."""
    return sql.DEBIT_IN_ONE.execute(conn, {**debit_row(new, values), "keys": [new.spec.user_id]})


def debited(
    conn: Connection, new: NewGeneration, values: dict[str, Any], cursor: Any
) -> tuple[GenerationRequest, bool]:
    """The answer to DEBIT_IN_ONE (its cursor): the request it queued, or why it moved nothing."""
    if cursor.fetchone() is None:
        refuse(conn, new.spec.user_id, -new.cost, new.max_in_flight)
        # The row, now locked, allows the debit (a job ended since the UPDATE looked): run it again.
        assert debit_alone(conn, new, values).fetchone() is not None, "a locked row refused the debit"
    return new.queued(), True
