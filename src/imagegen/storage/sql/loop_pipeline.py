"""PostgreSQL writes sent by the event loop itself: a batch pipelined on one async connection.

On PostgreSQL the writer thread (GroupCommit) spends a batch waiting for round trips, and after each
one waits again for the GIL, which the event loop holds while it serves requests; with the cores
shared by the API processes and the database, those hand-offs cost more CPU than the debits. So an
API process's event loop sends its creates' batches itself, over one psycopg AsyncConnection in
pipeline mode, and awaits the answers like any other socket: one round trip for the statements (the
transaction's checks, every call's statement, then its finishing statements such as NOTIFY), one for
the COMMIT, and no thread. One batch is in flight at a time; calls made meanwhile form the next.

Only the common case runs here: a batch whose statements all succeed. A call whose statement moved
nothing (a debit refused for credits or an in-flight limit) is left out of the commit and handed to
the writer thread, which runs it whole and says why. A batch with a failed statement or check, or a
broken connection, is rolled back and handed over whole; the writer reruns it the careful way, each
call in its own savepoint. Nothing was written for a call handed over, so running it there is
running it once. A COMMIT that fails fails every call of its batch, as on the writer thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import Dialect

from imagegen.errors import StorageUnavailable
from imagegen.storage.sql.calls import QueuedCall, call_order
from imagegen.storage.sql.driver import DriverStatement, RowsStatement

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
log = logging.getLogger("imagegen.storage")


class HandOver:
    """A call's answer when its statement moved nothing: the writer thread runs it whole instead."""


HAND_OVER = HandOver()


@dataclass(frozen=True)
class LoopStatement(Generic[R_co]):
    """One call's row for a statement that applies many calls' rows in one execution.

    Calls with the same `key` (e.g. the user whose balance the row moves) never share an execution:
    the second goes in the next one, after the first in the same transaction. `answer` gives the
    call's value from whether the statement applied its row, or HAND_OVER.
    """

    statement: RowsStatement
    row: dict[str, Any]
    key: Hashable
    answer: Callable[[bool], R_co | HandOver]


@dataclass
class LoopBatch:
    """What the calls of one pipelined batch share: checks sent first and statements sent last,
    each once per batch whichever calls ask for it."""

    checks: dict[Hashable, tuple[DriverStatement, dict[str, Any], Callable[[Any], bool]]] = field(
        default_factory=dict
    )
    finishers: dict[Hashable, tuple[DriverStatement, dict[str, Any]]] = field(default_factory=dict)

    def check(
        self, name: Hashable, statement: DriverStatement, params: dict[str, Any], holds: Callable[[Any], bool]
    ) -> None:
        """Sent before the calls; if `holds(first row)` is false, the batch is handed over whole."""
        self.checks.setdefault(name, (statement, params, holds))

    def finish(self, name: Hashable, statement: DriverStatement, params: dict[str, Any]) -> None:
        """Sent after the calls, in the same transaction."""
        self.finishers.setdefault(name, (statement, params))


class LoopPipelined(Protocol[R_co]):
    """A write call that can also be one statement of a batch the event loop pipelines."""

    @property
    def pipelines(self) -> bool:
        """False for a call that must run whole (on the writer thread)."""

    def on_loop(self, batch: LoopBatch) -> LoopStatement[R_co]: ...


class _BatchRefused(Exception):
    """A check of a pipelined batch failed: the batch is rolled back and handed over whole."""


class LoopPipeline:
    """Runs batches of `LoopPipelined` calls on the event loop that submits them (PostgreSQL)."""

    def __init__(
        self, engine: Engine, hand_over: Callable[[list[QueuedCall[Any]]], None], max_batch: int = 128
    ) -> None:
        url = engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._dialect: Dialect = engine.dialect
        self._hand_over = hand_over
        self._max_batch = max_batch
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._closed = False

    def submit(self, run: LoopPipelined[R], order: str) -> Awaitable[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if self._closed:
            future.set_exception(StorageUnavailable("storage is closed"))
            return future
        state = self._loops.get(loop) or self._add(loop)
        state.waiting.append(QueuedCall(run, future, order))  # type: ignore[arg-type]
        if state.draining is None:
            # A task starts after this turn of the loop: the calls its other handlers make join in.
            state.draining = loop.create_task(self._drain(state))
        return future

    def _add(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        for gone in [other for other in self._loops if other.is_closed()]:  # e.g. asyncio.run's, done
            self._loops.pop(gone).drop_connection()
        state = self._loops[loop] = _LoopState()
        return state

    def close(self) -> None:
        """Closes the async connections (from any thread: the loops may have stopped already)."""
        self._closed = True
        for state in list(self._loops.values()):
            state.drop_connection()

    async def _drain(self, state: _LoopState) -> None:
        try:
            while state.waiting:
                batch = sorted(state.waiting[: self._max_batch], key=call_order)
                del state.waiting[: self._max_batch]
                batch = [call for call in batch if call.start()]
                if batch:
                    await self._run(state, batch)
        finally:
            state.draining = None

    async def _run(self, state: _LoopState, batch: list[QueuedCall[Any]]) -> None:
        shared = LoopBatch()
        try:
            statements = [call.run.on_loop(shared) for call in batch]  # type: ignore[attr-defined]
            conn = await state.connection(self._conninfo)
            answers = await self._send(conn, shared, statements)
        except Exception as exc:  # a failed statement or check, a lost connection: nothing committed
            log.debug("a pipelined batch of %d went to the writer thread: %s", len(batch), exc)
            await state.roll_back()
            self._hand_over(batch)
            return
        try:
            await conn.commit()
        except psycopg.Error as exc:  # as on the writer thread: the batch's callers all hear of it
            state.drop_connection()
            log.warning("a batch of %d writes did not commit: %s", len(batch), exc)
            error = StorageUnavailable(f"database unavailable: {_first_line(exc)}")
            for call in batch:
                call.resolve(None, error)
            return
        refused = []
        for call, answer in zip(batch, answers, strict=True):
            if answer is HAND_OVER:
                refused.append(call)
            else:
                call.resolve(answer, None)
        if refused:
            self._hand_over(refused)

    async def _send(
        self, conn: psycopg.AsyncConnection[Any], shared: LoopBatch, statements: list[LoopStatement[Any]]
    ) -> list[Any]:
        """The batch's statements in one round trip; each call's answer (nothing is committed yet)."""
        async with conn.pipeline():
            checks = [
                (await self._execute(conn, statement.bind(self._dialect, params)), holds)
                for statement, params, holds in shared.checks.values()
            ]
            executions = []
            for group in _executions(statements):
                rows = [statements[index].row for index in group]
                bound = statements[group[0]].statement.bind(self._dialect, rows)
                executions.append((group, await self._execute(conn, bound)))
            for statement, params in shared.finishers.values():
                await self._execute(conn, statement.bind(self._dialect, params))
        for cursor, holds in checks:
            if not holds(await cursor.fetchone()):
                raise _BatchRefused("a check of the batch failed")
        answers: list[Any] = [None] * len(statements)
        for group, cursor in executions:
            rows = await cursor.fetchall()
            # A single row ran RowsStatement.one, which answers with a row if it applied.
            applied = ({1} if rows else set()) if len(group) == 1 else {ordinal for (ordinal,) in rows}
            for ordinal, index in enumerate(group, start=1):
                answers[index] = statements[index].answer(ordinal in applied)
        return answers

    async def _execute(
        self, conn: psycopg.AsyncConnection[Any], bound: tuple[str, Any]
    ) -> psycopg.AsyncCursor[Any]:
        cursor = conn.cursor()
        await cursor.execute(*bound)
        return cursor


def _executions(statements: list[LoopStatement[Any]]) -> list[list[int]]:
    """The calls (their indexes) each execution applies, in order: one execution per statement
    for the first call of each key, then another for the second, and so on."""
    rounds: list[dict[RowsStatement, list[int]]] = []
    seen: dict[tuple[RowsStatement, Hashable], int] = {}
    for index, each in enumerate(statements):
        turn = seen.get((each.statement, each.key), 0)
        seen[(each.statement, each.key)] = turn + 1
        if turn == len(rounds):
            rounds.append({})
        rounds[turn].setdefault(each.statement, []).append(index)
    return [group for groups in rounds for group in groups.values()]


@dataclass
class _LoopState:
    """One event loop's batches: the calls waiting for the next one and the connection they use."""

    waiting: list[QueuedCall[Any]] = field(default_factory=list)
    draining: asyncio.Task[None] | None = None
    conn: psycopg.AsyncConnection[Any] | None = None

    async def connection(self, conninfo: str) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(conninfo)
        return self.conn

    async def roll_back(self) -> None:
        """Ends a failed batch's transaction; a connection that cannot is dropped (the next batch
        opens a new one)."""
        if self.conn is None:
            return
        try:
            await self.conn.rollback()
        except psycopg.Error:
            self.drop_connection()

    def drop_connection(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.pgconn.finish()
        self.conn = None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
