"""The group-committing writer: the writes that arrive together share one transaction."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from imagegen.domain.errors import StorageUnavailable
from imagegen.storage.sql.calls import BEFORE_COMMIT, Batch, LoopPipelined, QueuedCall, call_order
from imagegen.storage.sql.driver import driver_connection
from imagegen.storage.sql.errors import MAX_ATTEMPTS, Retryable, translate
from imagegen.storage.sql.lazy_thread import LazyThread
from imagegen.storage.sql.transactions import Transactions, WriterBusy

if TYPE_CHECKING:
    from imagegen.storage.sql.dialects import Dialect

log = logging.getLogger("imagegen.storage")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


LOOP_RETRY = 0.001  # seconds between the event loop's attempts to write
LOOP_PATIENCE = 0.05  # after this long, the writer thread takes the batch over


@runtime_checkable
class Pipelined(Protocol[R_co]):
    """A call that can also run in two halves, for PostgreSQL's pipeline mode.

    Called as a function it runs whole. In a pipelined batch, `send` queues its statements (their
    results are not there yet) and `receive`, once the whole batch has been sent and its results
    came back in one round trip, reads them and gives the call's value or raises. `receive` may
    run further statements (then one round trip each), e.g. to tell why a debit moved nothing.
    """

    @property
    def pipelines(self) -> bool:
        """False for a call that must run whole even in a pipelined batch's place (then the batch does)."""

    def __call__(self, conn: Connection, batch: Batch) -> R_co: ...

    def send(self, conn: Connection, batch: Batch) -> Any: ...

    def receive(self, conn: Connection, batch: Batch, sent: Any) -> R_co: ...


class _CallFailed(Exception):
    def __init__(self, error: Exception, batch: list[QueuedCall[Any]]) -> None:
        self.error = error
        self.batch = batch  # the calls that were running

    @classmethod
    def of(cls, exc: Exception, batch: list[QueuedCall[Any]]) -> _CallFailed:
        """A call of `batch` raised `exc` (a driver error is translated, as for any caller)."""
        return cls(translate(exc) if isinstance(exc, DBAPIError) else exc, batch)


class GroupCommit:
    """One writer thread that runs queued write functions together, in one transaction per batch.

    Every call is atomic on its own: a call that raises has none of its writes kept, and only its
    caller sees the error. The batch commits once, and no caller hears of success before that
    commit: durability is the same as one transaction per call, at a fraction of the cost (on SQLite
    a commit writes the WAL, and handing a lock from thread to thread waits for the GIL).

    A batch first runs its calls straight through; if one raises, the transaction is rolled back
    and the batch runs again with a SAVEPOINT around each call, so the failing call is undone alone
    (the calls are functions of the database's state, so running them again is running them once).
    A commit that fails fails every call of its batch, none of which is then written. Calls run in
    the order of their `order` key (the user id for a debit), so two processes' batches take row
    locks in the same order and do not deadlock each other.
    """

    def __init__(self, tx: Transactions, dialect: Dialect, max_batch: int = 128) -> None:
        self._tx = tx
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[QueuedCall[Any] | None] = queue.SimpleQueue()
        self._thread = LazyThread(self._loop, "imagegen-writer")
        self._closed = False
        self._on_loop: list[QueuedCall[Any]] = []  # submitted on the event loop, flushed after its turn
        self._loop_pipeline = dialect.loop_pipeline(tx.engine, self._hand_over, max_batch)
        # Decided once: SQLite's loop runs its batches in place, PostgreSQL's sends them (or hands
        # them to this writer), and only PostgreSQL pipelines the writer's batches.
        self._from_loop = self._submit_to_loop_batch if tx.dialect == "sqlite" else self._submit_to_pipeline
        self._can_pipeline = tx.dialect == "postgresql"

    def submit(self, run: Callable[[Connection, Batch], R], order: str = "") -> Future[R]:
        future: Future[R] = Future()
        if self._closed:
            future.set_exception(StorageUnavailable("storage is closed"))
            return future
        self._start()
        self._queue.put(QueuedCall(run, future, order))
        return future

    def submit_from_loop(self, run: Callable[[Connection, Batch], R], order: str = "") -> Awaitable[R]:
        """For a caller on an asyncio event loop: the calls its handlers submit in one turn of the
        loop run as one batch on the loop itself, right after that turn. (On PostgreSQL the calls
        that can, the debits, are sent by a LoopPipeline; others go to the writer thread.)

        On SQLite a batch is a few dozen microseconds of work per call: run where the callers are,
        it costs no thread switch at all, where the writer thread waits for the GIL after every
        statement. Should the database not be writable at once (a job worker of this process is
        writing, or another process is), the batch goes to the writer thread instead: the loop
        never waits on a lock.
        """
        return self._from_loop(run, order)

    def _submit_to_pipeline(self, run: Callable[[Connection, Batch], R], order: str) -> Awaitable[R]:
        # (Not isinstance(run, LoopPipelined): a runtime protocol check costs ~10 µs a create.)
        if self._loop_pipeline is not None and hasattr(run, "on_loop") and run.pipelines:  # type: ignore[attr-defined]
            return self._loop_pipeline.submit(cast(LoopPipelined[R], run), order)  # see LoopPipeline
        return asyncio.wrap_future(self.submit(run, order))

    def _submit_to_loop_batch(self, run: Callable[[Connection, Batch], R], order: str) -> Awaitable[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if self._closed:
            future.set_exception(StorageUnavailable("storage is closed"))
            return future
        if not self._on_loop:
            self._loop_waiting_since = time.monotonic()
            loop.call_soon(self._flush_loop_batch)
        self._on_loop.append(QueuedCall(run, future, order))
        return future

    def _flush_loop_batch(self) -> None:
        batch = sorted(self._on_loop, key=call_order)
        try:
            self._commit(batch, now=True)
        except WriterBusy:
            if time.monotonic() - self._loop_waiting_since < LOOP_PATIENCE:
                asyncio.get_running_loop().call_later(LOOP_RETRY, self._flush_loop_batch)
                return  # another writer is at it: look again shortly (new calls join the batch)
            self._start()  # a long writer: let the writer thread wait for it instead of the loop
            for work in batch:
                self._queue.put(work)
        self._on_loop = []

    def _hand_over(self, calls: list[QueuedCall[Any]]) -> None:
        """Calls the loop's pipeline did not commit, for the writer thread to run whole."""
        if self._closed:
            for call in calls:
                call.resolve(None, StorageUnavailable("storage is closed"))
            return
        self._start()
        for call in calls:
            self._queue.put(call)

    def close(self) -> None:
        self._closed = True
        if self._loop_pipeline is not None:
            self._loop_pipeline.close()
        if self._thread.started:
            self._queue.put(None)
            self._thread.join()

    def _start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._commit(sorted(batch, key=call_order))

    def _commit(self, batch: list[QueuedCall[Any]], now: bool = False) -> None:
        """Runs and commits `batch`, and resolves its futures; with `now`, raises WriterBusy (and
        leaves every future as it was) rather than wait for the transaction to begin."""
        try:
            try:
                outcomes = self._transaction(batch, careful=False, now=now)
            except _CallFailed as failed:
                if len(failed.batch) == 1 and not isinstance(failed.error, Retryable):
                    outcomes = [(failed.batch[0], None, failed.error)]  # as its own transaction
                else:
                    outcomes = self._transaction(failed.batch, careful=True, now=now)
        except WriterBusy:
            raise
        except Exception as exc:  # the batch did not commit: nothing of it was written
            log.warning("a batch of %d writes did not commit: %s", len(batch), exc)
            for work in batch:
                work.resolve(None, exc)
            return
        for work, value, error in outcomes:
            work.resolve(value, error)

    def _transaction(
        self, batch: list[QueuedCall[Any]], careful: bool, now: bool = False
    ) -> list[tuple[QueuedCall[Any], Any, Exception | None]]:
        shared: Batch = {}
        outcomes: list[tuple[QueuedCall[Any], Any, Exception | None]] = []
        with self._tx.write_now() if now else self._tx.write() as conn:
            # Begun: the calls are running now (a careful rerun finds them running already), unless
            # their callers gave up meanwhile.
            batch = [work for work in batch if work.start()]
            if not careful and self._pipelines(batch):
                return self._pipelined(conn, batch, shared)
            for work in batch:
                if careful:
                    outcomes.append((work, *_run_in_savepoint(conn, work, shared)))
                    continue
                try:
                    outcomes.append((work, work.run(conn, shared), None))
                except Exception as exc:
                    raise _CallFailed.of(exc, batch) from exc
            for finish in shared.get(BEFORE_COMMIT, {}).values():
                finish(conn)
        return outcomes

    def _pipelines(self, batch: list[QueuedCall[Any]]) -> bool:
        return (
            self._can_pipeline
            and len(batch) > 1
            and all(isinstance(work.run, Pipelined) and work.run.pipelines for work in batch)
        )

    def _pipelined(
        self, conn: Connection, batch: list[QueuedCall[Any]], shared: Batch
    ) -> list[tuple[QueuedCall[Any], Any, Exception | None]]:
        """Sends the whole batch (BEGIN included) before reading any result: one round trip for
        what would be one per statement. Any failure reruns the batch the careful way."""
        try:
            with driver_connection(conn).pipeline():
                sent = [work.run.send(conn, shared) for work in batch]  # type: ignore[attr-defined]
                for finish in shared.get(BEFORE_COMMIT, {}).values():
                    finish(conn)
        except Exception as exc:  # a statement failed: the database refused the batch as a whole
            raise _CallFailed(Retryable(f"pipelined batch failed: {exc}"), batch) from exc
        outcomes: list[tuple[QueuedCall[Any], Any, Exception | None]] = []
        for work, handle in zip(batch, sent, strict=True):
            try:
                outcomes.append((work, work.run.receive(conn, shared, handle), None))  # type: ignore[attr-defined]
            except Exception as exc:
                raise _CallFailed.of(exc, batch) from exc
        return outcomes


def _run_in_savepoint(conn: Connection, work: QueuedCall[Any], shared: Batch) -> tuple[Any, Exception | None]:
    """Runs one call in its own savepoint: its value, or its error with its writes undone."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        savepoint = conn.begin_nested()
        try:
            value = work.run(conn, shared)
        except DBAPIError as exc:
            savepoint.rollback()
            error = translate(exc)
            if isinstance(error, Retryable) and attempt < MAX_ATTEMPTS:
                continue  # a deadlock victim: only its statement was undone, run it again
            return None, error
        except Exception as exc:
            savepoint.rollback()
            return None, exc
        savepoint.commit()
        return value, None
    raise AssertionError("unreachable")
