"""Engines for SQLite (WAL, busy timeout, one writer at a time) and PostgreSQL (psycopg 3, pooled)."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar, cast, runtime_checkable

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from imagegen.errors import InvalidInput, ReaderBusy, StorageUnavailable
from imagegen.storage.sql.calls import BEFORE_COMMIT, Batch, QueuedCall, call_order
from imagegen.storage.sql.driver import driver_connection
from imagegen.storage.sql.loop_pipeline import LoopPipeline, LoopPipelined

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_POOL_SIZE = 64
CHECKPOINT_INTERVAL = 0.1  # seconds between the Checkpointer's WAL checkpoints
P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
log = logging.getLogger("imagegen.storage")


def create_sql_engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        return _postgres_engine(url)
    raise InvalidInput(
        f"Unsupported database URL '{parsed.render_as_string()}': use sqlite:/// or postgresql://"
    )


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    if not parsed.database or parsed.database == ":memory:":
        raise InvalidInput(
            "imagegen needs a SQLite file (sqlite:///path/to/file.db), not an in-memory database"
        )
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # One connection per thread that may use it at once (the HTTP thread pool, job workers), kept
    # open: opening one costs its PRAGMAs, and closing the last one checkpoints under an exclusive lock.
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=SQLITE_POOL_SIZE,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN itself, so that writers can ask for IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Commits never checkpoint: the Checkpointer thread does, off the paths that answer clients.
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes the write lock at BEGIN, so it never fails to upgrade a read lock midway.
        immediate = conn.get_execution_options().get("imagegen_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


POSTGRES_POOL_SIZE = 10  # connections per process, at most (besides LISTEN and the event loop's own)


def _postgres_engine(url: str) -> Engine:
    parsed = make_url(url).set(drivername="postgresql+psycopg")
    # No pre-ping: it costs a round trip per checkout (a quarter of the create route's throughput).
    # A connection that died with its server fails its one statement instead; SQLAlchemy then
    # replaces every connection of the pool opened before it (see tests: a restarted server).
    # A fixed pool: a thread that finds every connection lent waits for one. With overflow
    # connections, a busy API process (64 connections' reads on the thread pool) opened and closed
    # one per request beyond the pool's size, a PostgreSQL backend started for each:
    # getUserCredits ran at ~295 req/s, ~560 on the fixed pool.
    return create_engine(parsed, pool_size=POSTGRES_POOL_SIZE, max_overflow=0)


class Transactions:
    """Opens read and write transactions; on SQLite, one writer at a time per process.

    SQLite makes waiting writers sleep and retry rather than queue: serialising them here keeps the
    worst wait short (see PERFORMANCE.md). Other processes still wait on the busy timeout.
    """

    def __init__(self, engine: Engine, checkpoint_interval: float = CHECKPOINT_INTERVAL) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer: threading.Lock | None = None
        self._checkpointer: Checkpointer | None = None
        if self.dialect == "sqlite":
            self._writer = threading.Lock()
            self._checkpointer = Checkpointer(engine, self._writer, checkpoint_interval)
        self._here = threading.local()  # .on_loop: this thread's reads go to the loop's connection
        self._loop_lock = threading.Lock()
        self._loop_conn: Connection | None = None
        # PostgreSQL: the same pool, each statement its own transaction (see `statement`).
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._loop_lock:
            if self._loop_conn is not None:
                self._loop_conn.close()
                self._loop_conn = None

    @property
    def reads_on_loop(self) -> bool:
        """SQLite reads take tens of microseconds and never wait for writers (WAL): an event loop
        can run them itself instead of handing them to a thread (see `reading_on_loop`)."""
        return self.dialect == "sqlite"

    @contextmanager
    def reading_on_loop(self) -> Iterator[None]:
        """The `read()` transactions this thread opens inside the block run on one connection kept
        for the event loop, with no busy timeout: if SQLite cannot be read at once, or another
        thread is using that connection, they raise ReaderBusy (nothing was done) instead of
        waiting, and the caller runs the same work on a thread.

        A thread pool costs more than such a read: each SQLite call releases the GIL and takes it
        back, and handing it between the pool's threads and the busy event loop is where
        getUserCredits spent its time (futex waits and wake-ups; see bench/README.md).
        """
        assert self.reads_on_loop, "reading on the event loop is for SQLite"
        self._here.on_loop = True
        try:
            yield
        finally:
            self._here.on_loop = False

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._writer or nullcontext(), translate_errors(), self.engine.connect() as conn:
            conn.execution_options(imagegen_write=True)
            with conn.begin():
                yield conn
        if self._checkpointer is not None:
            self._checkpointer.written()

    @contextmanager
    def statement(self) -> Iterator[Connection]:
        """For work that is one statement, atomic on its own: on PostgreSQL a connection without a
        transaction around it, which spares the BEGIN and the COMMIT (two round trips of three);
        on SQLite, where they cost no round trip, a read transaction as `read()` gives.

        Only for a single read, or a single write whose statement does all of it (and is safe to
        run again when `retrying` repeats it).
        """
        if self.dialect == "sqlite":
            with self.read() as conn:
                yield conn
            return
        with translate_errors(), self._autocommit.connect() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        if getattr(self._here, "on_loop", False):
            with self._read_on_loop() as conn:
                yield conn
            return
        with translate_errors(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _read_on_loop(self) -> Iterator[Connection]:
        if not self._loop_lock.acquire(blocking=False):
            raise ReaderBusy
        try:
            if self._loop_conn is None:
                self._loop_conn = self.engine.connect()
                driver_connection(self._loop_conn).execute("PRAGMA busy_timeout=0")
            with translate_errors():
                try:
                    with self._loop_conn.begin():
                        yield self._loop_conn
                except DBAPIError as exc:
                    if isinstance(exc, OperationalError) and _is_busy(exc):
                        raise ReaderBusy from exc
                    self._loop_conn.close()  # whatever broke it, the next read opens a fresh one
                    self._loop_conn = None
                    raise
        finally:
            self._loop_lock.release()

    @contextmanager
    def write_now(self) -> Iterator[Connection]:
        """A SQLite write transaction if the database can be written at once, else WriterBusy.

        For a caller that must not wait (the event loop): it neither queues on this process's
        writer lock nor sleeps on SQLite's busy timeout while another process writes.
        """
        assert self._writer is not None, "write_now is for SQLite"
        if not self._writer.acquire(blocking=False):
            raise WriterBusy
        try:
            with translate_errors(), self.engine.connect() as conn:
                conn.execution_options(imagegen_write=True)
                driver = driver_connection(conn)
                driver.execute("PRAGMA busy_timeout=0")
                try:
                    try:
                        transaction = conn.begin()
                    except OperationalError as exc:  # another process holds the write lock
                        raise WriterBusy from exc
                    with transaction:
                        yield conn
                finally:
                    driver.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            self._writer.release()
        if self._checkpointer is not None:
            self._checkpointer.written()


class Checkpointer:
    """Copies the SQLite WAL back into the database file, from a thread of its own.

    By SQLite's default, the commit that takes the WAL past 1,000 pages checkpoints it: writes the
    pages back and syncs the file, milliseconds to tens of milliseconds inside that commit. The
    commit may be the event loop's (GroupCommit.submit_from_loop), which then answers nobody until
    it is done. So every connection turns that off, and this thread checkpoints CHECKPOINT_INTERVAL
    after a write, with SQLite releasing the GIL while it works.

    A PASSIVE checkpoint takes no lock that writers or readers wait for, but it copies only the
    frames written before it began, and the WAL restarts from its beginning only when a write
    begins after a checkpoint that copied all of it: under a steady load the WAL would grow without
    end. So each round runs a second, short checkpoint (of the frames written meanwhile) holding
    this process's writer lock. Frames a reader's snapshot still needs wait for a later round. The
    thread starts with the first write and sleeps while nothing is written.
    """

    def __init__(self, engine: Engine, writer: threading.Lock, interval: float = CHECKPOINT_INTERVAL) -> None:
        self._engine = engine
        self._writer = writer
        self._interval = interval
        self._written = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def written(self) -> None:
        """Called after each write transaction: a checkpoint is due within the interval."""
        if self._written.is_set():
            return
        self._written.set()
        if self._thread is None:
            with self._starting:
                if self._thread is None and not self._closed.is_set():
                    self._thread = threading.Thread(
                        target=self._run, name="imagegen-checkpointer", daemon=True
                    )
                    self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._written.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while True:
            self._written.wait()
            if self._closed.wait(self._interval):
                return  # closing: the last connection to close checkpoints what is left
            self._written.clear()
            try:
                self.round()
            except Exception as exc:  # the database is busy or gone: the next write tries again
                log.debug("WAL checkpoint skipped: %s", exc)

    def round(self) -> None:
        self.checkpoint()  # copies what was written before it began, while writers go on
        with self._writer:  # copies what they wrote meanwhile: now the next write restarts the WAL
            self.checkpoint()

    def checkpoint(self) -> None:
        """One PASSIVE checkpoint: copies back what no reader's snapshot still needs."""
        with self._engine.connect() as conn:
            driver_connection(conn).execute("PRAGMA wal_checkpoint(PASSIVE)")


LOOP_RETRY = 0.001  # seconds between the event loop's attempts to write
LOOP_PATIENCE = 0.05  # after this long, the writer thread takes the batch over


class WriterBusy(Exception):
    """The database could not be written at once: nothing was done."""


def _is_busy(exc: OperationalError) -> bool:
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


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

    def __init__(self, tx: Transactions, max_batch: int = 128) -> None:
        self._tx = tx
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[QueuedCall[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()
        self._closed = False
        self._on_loop: list[QueuedCall[Any]] = []  # submitted on the event loop, flushed after its turn
        self._loop_pipeline = (
            LoopPipeline(tx.engine, self._hand_over, max_batch) if tx.dialect == "postgresql" else None
        )

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
        if self._tx.dialect != "sqlite":
            # (Not isinstance(run, LoopPipelined): a runtime protocol check costs ~10 µs a create.)
            if self._loop_pipeline is not None and hasattr(run, "on_loop") and run.pipelines:  # type: ignore[attr-defined]
                return self._loop_pipeline.submit(cast(LoopPipelined[R], run), order)  # see LoopPipeline
            return asyncio.wrap_future(self.submit(run, order))
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
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10)

    def _start(self) -> None:
        if self._thread is None:
            with self._started:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="imagegen-writer", daemon=True)
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
            self._tx.dialect == "postgresql"
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


class Retryable(StorageUnavailable):
    """A serialization failure or deadlock: the transaction did nothing and may simply run again."""


# PostgreSQL (and the distributed engines that speak its protocol) ask clients to retry these.
RETRYABLE_SQLSTATES = {"40001", "40P01"}
MAX_ATTEMPTS = 8


def retrying(method: Callable[P, R]) -> Callable[P, R]:
    """Runs a whole storage method again (with jittered backoff) when its transaction must be retried."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except Retryable:
                if attempt == MAX_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    return wrapper


@contextmanager
def translate_errors() -> Iterator[None]:
    """Driver errors that mean 'the database is not there or too busy' become StorageUnavailable."""
    try:
        yield
    except DBAPIError as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc


def translate(exc: DBAPIError) -> Exception:
    """Retryable for a conflict, StorageUnavailable for a database that is gone or busy, else `exc`."""
    if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return Retryable(f"transaction conflict: {_first_line(exc)}")
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return StorageUnavailable(f"database unavailable: {_first_line(exc)}")
    return exc


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig else str(exc)
