"""On SQLite the adapter runs short reads on the event loop itself (getUserCredits), and never waits.

A read runs at once on a connection kept for the loop, or (when another thread is using that
connection, or the database cannot be read without waiting) on a thread, with the same answer.
Writes go to threads, and a create's debit commits in the loop's own batch: no thread hop either.
Which thread ran what is seen through the engine's events: the statements and transactions it ran.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event

from imagegen.clock import utcnow
from imagegen.domain.errors import InvalidInput, StorageUnavailable
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import new_generation
from tests.support import migrated_sql


@pytest.fixture
async def sql(tmp_path: Path) -> AsyncIterator[SqlStorage]:
    async for storage in migrated_sql(f"sqlite:///{tmp_path / 'loop.db'}"):
        yield storage


@contextmanager
def threads_of(sql: SqlStorage, what: str = "before_cursor_execute") -> Iterator[list[int]]:
    """The thread of each statement (or, with "begin", each transaction) the engine runs meanwhile."""
    seen: list[int] = []

    def record(*_: Any) -> None:
        seen.append(threading.get_ident())

    event.listen(sql.engine, what, record)
    try:
        yield seen
    finally:
        event.remove(sql.engine, what, record)


@contextmanager
def connections_of(sql: SqlStorage) -> Iterator[list[Any]]:
    """The DB-API connection of each statement the engine runs meanwhile."""
    seen: list[Any] = []

    def record(conn: Connection, *_: Any) -> None:
        seen.append(conn.connection.dbapi_connection)

    event.listen(sql.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(sql.engine, "before_cursor_execute", record)


async def credits(sql: SqlStorage) -> tuple[int, int]:
    """What getUserCredits reads."""
    user = await sql.get_user("testUser1")
    page = await sql.ledger("testUser1", 10, None)
    assert user is not None
    return user.credits, len(page.items)


async def test_reads_run_on_the_loop_and_see_the_same_data_and_errors(sql: SqlStorage) -> None:
    loop_thread = threading.get_ident()
    with threads_of(sql) as threads:
        assert await credits(sql) == (100, 1)
        assert await sql.get_user("nobody") is None
        with pytest.raises(InvalidInput):
            await sql.ledger("testUser1", 10, "not-a-cursor")
        assert await credits(sql) == (100, 1)  # the connection is usable after an error
    assert threads and set(threads) == {loop_thread}

    with threads_of(sql) as threads:
        await sql.create_user("late", 5, utcnow())  # a write: on a thread, another connection
    assert threads and loop_thread not in threads
    late = await sql.get_user("late")  # seen by the next read on the loop
    assert late is not None and late.credits == 5


async def test_a_create_commits_in_the_loops_own_batch(sql: SqlStorage) -> None:
    loop_thread = threading.get_ident()
    with threads_of(sql, "begin") as transactions:
        request, created = await sql.debit_and_enqueue(new_generation())
    assert created and await sql.get_request(request.id) == request
    assert transactions == [loop_thread]  # one transaction, begun on the loop


async def test_a_broken_loop_connection_fails_one_read_and_is_replaced(sql: SqlStorage) -> None:
    with connections_of(sql) as used:
        assert await sql.get_user("testUser1") is not None
    [driver] = set(used)
    driver.close()  # the loop's connection, broken underneath SQLAlchemy

    with pytest.raises(StorageUnavailable):  # a 503 for this one read
        await sql.get_user("testUser1")
    with connections_of(sql) as used:
        assert await sql.get_user("testUser1") is not None
    [replaced] = set(used)
    assert replaced is not driver
    assert replaced.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # and it never waits either


async def test_a_read_while_the_loops_connection_is_taken_runs_on_a_thread_at_once(sql: SqlStorage) -> None:
    loop_thread = threading.get_ident()
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        # Another event loop's read (another thread), in the middle of its transaction.
        with sql.tx.reading_on_loop(), sql.tx.read():
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    try:
        started = time.monotonic()
        with threads_of(sql) as threads:
            assert await credits(sql) == (100, 1)
        assert time.monotonic() - started < 1
        assert threads and loop_thread not in threads
    finally:
        release.set()
        holder.join(10)


async def test_two_event_loops_reading_at_once_all_get_their_answers(sql: SqlStorage) -> None:
    async def many() -> list[tuple[int, int]]:
        return list(await asyncio.gather(*(credits(sql) for _ in range(50))))

    other = asyncio.to_thread(asyncio.run, many())  # a second loop, on a thread of its own
    mine, theirs = await asyncio.gather(many(), other)

    assert mine == theirs == [(100, 1)] * 50
