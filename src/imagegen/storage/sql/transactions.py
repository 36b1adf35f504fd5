"""Read and write transactions on SQLite and PostgreSQL; on SQLite, one writer at a time per process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from imagegen.storage.sql.checkpointer import CHECKPOINT_INTERVAL, Checkpointer
from imagegen.storage.sql.driver import driver_connection
from imagegen.storage.sql.engines import SQLITE_BUSY_TIMEOUT_MS
from imagegen.storage.sql.errors import translate_errors


class ReaderBusy(Exception):
    """The event loop could not read the database at once. Nothing was done; the adapter runs the
    same read on a thread, where it may wait (see SqlStorage's reads on SQLite)."""


class Transactions:
    """Opens read and write transactions; on SQLite, one writer at a time per process.

    SQLite makes waiting writers sleep and retry rather than queue: serialising them here keeps the
    worst wait short (see docs/performance.md). Other processes still wait on the busy timeout.
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
        self._statement = self.read if self.dialect == "sqlite" else self._without_transaction

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
        waiting, and the adapter (adapter.py) runs the same work on a thread.

        A thread pool costs more than such a read: each SQLite call releases the GIL and takes it
        back, and handing it between the pool's threads and the busy event loop is where
        getUserCredits spent its time (futex waits and wake-ups; see docs/performance.md).
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

    def statement(self) -> AbstractContextManager[Connection]:
        """For work that is one statement, atomic on its own: on PostgreSQL a connection without a
        transaction around it, which spares the BEGIN and the COMMIT (two round trips of three);
        on SQLite, where they cost no round trip, a read transaction as `read()` gives.

        Only for a single read, or a single write whose statement does all of it (and is safe to
        run again when `retrying` repeats it).
        """
        return self._statement()

    @contextmanager
    def _without_transaction(self) -> Iterator[Connection]:
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


class WriterBusy(Exception):
    """The database could not be written at once: nothing was done."""


def _is_busy(exc: OperationalError) -> bool:
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)
