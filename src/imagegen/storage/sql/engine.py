"""Engines for SQLite (WAL, busy timeout, one writer at a time) and PostgreSQL (psycopg 3, pooled)."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from imagegen.errors import InvalidInput, StorageUnavailable

SQLITE_BUSY_TIMEOUT_MS = 10_000
P = ParamSpec("P")
R = TypeVar("R")


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
    engine = create_engine(
        parsed, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
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
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes the write lock at BEGIN, so it never fails to upgrade a read lock midway.
        immediate = conn.get_execution_options().get("imagegen_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url: str) -> Engine:
    parsed = make_url(url).set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Transactions:
    """Opens read and write transactions; on SQLite, one writer at a time per process.

    SQLite makes waiting writers sleep and retry rather than queue: serialising them here keeps the
    worst wait short (see PERFORMANCE.md). Other processes still wait on the busy timeout.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = threading.Lock() if self.dialect == "sqlite" else None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._writer or nullcontext(), translate_errors(), self.engine.connect() as conn:
            conn.execution_options(imagegen_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with translate_errors(), self.engine.connect() as conn, conn.begin():
            yield conn


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
        if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
            raise Retryable(f"transaction conflict: {_first_line(exc)}") from exc
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise StorageUnavailable(f"database unavailable: {_first_line(exc)}") from exc
        raise


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig else str(exc)
