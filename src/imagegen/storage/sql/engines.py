"""Engines for SQLite (WAL, one connection per thread, BEGIN IMMEDIATE for writers) and PostgreSQL
(psycopg 3, a fixed pool)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from imagegen.domain.errors import InvalidInput

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_POOL_SIZE = 64


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
        hide_parameters=True,  # errors that reach a log line never show values (secrets, prompts)
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
    return create_engine(parsed, pool_size=POSTGRES_POOL_SIZE, max_overflow=0, hide_parameters=True)
