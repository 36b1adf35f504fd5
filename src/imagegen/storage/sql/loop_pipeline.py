"""PostgreSQL writes sent by the event loop itself: a batch as one transaction in one round trip.

On PostgreSQL the writer thread (GroupCommit) spends a batch waiting for round trips, and after each
one waits again for the GIL, which the event loop holds while it serves requests; with the cores
shared by the API processes and the database, those hand-offs cost more CPU than the debits. So an
API process's event loop sends its creates' batches itself, over one psycopg AsyncConnection, and
awaits the answer like any other socket, with no thread. A batch's calls become the rows of one
statement (`RowsStatement`) that does everything their transaction needs; on an autocommit
connection it is its own transaction: one execution, one round trip. Only when a key (a user) comes
twice does the batch need more executions, one per turn of that key; then they go out pipelined
between BEGIN and COMMIT, still in one round trip. One batch is in flight at a time; calls made
meanwhile form the next.

Only the common case runs here: a batch whose statements all succeed. A call whose row moved nothing
(a debit refused for credits, an in-flight limit or a stale configuration) is left out and handed to
the writer thread, which runs it whole and says why. A batch whose statement failed on the server
wrote nothing (its transaction is rolled back) and is handed over whole; the writer reruns it the
careful way, each call in its own savepoint. Nothing was written for a call handed over, so running
it there is running it once. A connection lost while a batch was out leaves it unknown whether the
batch committed: its callers all hear StorageUnavailable, as on the writer thread when a COMMIT
fails. A connection that died while idle (a restarted server, an administrator) is noticed before
a batch is sent on it (its socket has something to read) and replaced.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import Dialect

from imagegen.domain.errors import StorageUnavailable
from imagegen.storage.sql.calls import HAND_OVER, LoopPipelined, LoopStatement, QueuedCall, call_order
from imagegen.storage.sql.driver import RowsStatement

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
log = logging.getLogger("imagegen.storage")
LOOP_APPLICATION_NAME = "imagegen-loop"


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
                    try:
                        await self._run(state, batch)
                    except Exception as exc:  # a bug, not the database: no caller may wait forever
                        log.exception("a batch of %d writes failed on the loop", len(batch))
                        for call in batch:
                            call.resolve(None, exc)
        finally:
            state.draining = None

    async def _run(self, state: _LoopState, batch: list[QueuedCall[Any]]) -> None:
        try:
            statements = [call.run.on_loop() for call in batch]  # type: ignore[attr-defined]
            conn = await state.connection(self._conninfo)
        except Exception as exc:  # no connection: nothing was sent
            log.debug("a batch of %d went to the writer thread: %s", len(batch), exc)
            self._hand_over(batch)
            return
        try:
            answers = await self._send(conn, statements)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:  # lost with the batch out: it may have committed
                state.drop_connection()
                log.warning("lost the connection with a batch of %d writes out: %s", len(batch), exc)
                error = StorageUnavailable(f"database unavailable: {_first_line(exc)}")
                for call in batch:
                    call.resolve(None, error)
                return
            # The server refused a statement (or the COMMIT): nothing of the batch was written.
            log.debug("a batch of %d went to the writer thread: %s", len(batch), exc)
            await state.roll_back()
            self._hand_over(batch)
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
        self, conn: psycopg.AsyncConnection[Any], statements: list[LoopStatement[Any]]
    ) -> list[Any]:
        """The batch, committed; each call's answer from whether its row was applied."""
        executions = []
        groups = execution_groups(statements)
        if len(groups) == 1:  # one statement: its own transaction (the connection autocommits)
            executions.append((groups[0], await conn.execute(*self._bind(statements, groups[0]))))
        else:
            async with conn.pipeline():
                await conn.execute("BEGIN")
                for group in groups:
                    executions.append((group, await conn.execute(*self._bind(statements, group))))
                await conn.execute("COMMIT")
        answers: list[Any] = [None] * len(statements)
        for group, cursor in executions:
            applied = {ordinal for (ordinal,) in await cursor.fetchall()}
            for ordinal, index in enumerate(group, start=1):
                answers[index] = statements[index].answer(ordinal in applied)
        return answers

    def _bind(self, statements: list[LoopStatement[Any]], group: list[int]) -> tuple[str, Any]:
        rows = [statements[index].row for index in group]
        return statements[group[0]].statement.bind(self._dialect, rows)


def execution_groups(statements: list[LoopStatement[Any]]) -> list[list[int]]:
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
        if self.conn is not None and (self.conn.closed or _has_input(self.conn)):
            # An idle connection has nothing to say unless the server ended it (ErrorResponse, EOF).
            self.drop_connection()
        if self.conn is None:
            # Named, so that an operator (and a test) can tell it in pg_stat_activity.
            self.conn = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, application_name=LOOP_APPLICATION_NAME
            )
        return self.conn

    async def roll_back(self) -> None:
        """Ends a failed batch's transaction, if one is open; a connection that cannot is dropped
        (the next batch opens a new one)."""
        if self.conn is None or self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return
        try:
            await self.conn.execute("ROLLBACK")
        except psycopg.Error:
            self.drop_connection()

    def drop_connection(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.pgconn.finish()
        self.conn = None


def _has_input(conn: psycopg.AsyncConnection[Any]) -> bool:
    # poll, not select: select() refuses descriptors above 1024, which a busy server reaches.
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
