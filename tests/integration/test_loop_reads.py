"""On SQLite the event loop runs short reads itself (getUserCredits), and never waits for one.

Inside `reading_on_loop()` a read runs at once on the loop's own connection, or raises ReaderBusy
having done nothing: when another thread is using that connection, or when the database cannot be
read without waiting. `read_only` then runs the same work on a thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from imagegen import service
from imagegen.api.common import read_only
from imagegen.clock import utcnow
from imagegen.domain.errors import ReaderBusy, StorageUnavailable, UserNotFound
from imagegen.runtime import Runtime
from imagegen.storage.sql.adapter import SqlStorage
from tests.support import migrated_sql


@pytest.fixture
def sql(tmp_path: Path) -> Iterator[SqlStorage]:
    yield from migrated_sql(f"sqlite:///{tmp_path / 'loop.db'}")


def credits(storage: SqlStorage) -> tuple[int, int, int]:
    """What getUserCredits reads, and the thread that read it."""
    user, page = service.get_credits(storage, "testUser1", limit=10, cursor=None)
    return user.credits, len(page.items), threading.get_ident()


def test_reads_on_the_loop_see_the_same_data_and_errors(sql: SqlStorage) -> None:
    with sql.reading_on_loop():
        assert credits(sql)[:2] == (100, 1)
        with pytest.raises(UserNotFound):
            service.get_user(sql, "nobody")
        assert credits(sql)[:2] == (100, 1)  # the connection is usable after an error
    sql.create_user("late", 5, utcnow())  # written on another connection, seen by the next read
    with sql.reading_on_loop():
        assert service.get_user(sql, "late").credits == 5


def test_a_broken_loop_connection_fails_one_read_and_is_replaced(sql: SqlStorage) -> None:
    with sql.reading_on_loop():
        assert sql.get_user("testUser1") is not None
        with sql.tx.read() as conn:  # the loop's connection, broken underneath SQLAlchemy
            driver = conn.connection.dbapi_connection
        assert driver is not None
        driver.close()
        with pytest.raises(StorageUnavailable):  # a 503 for this one read
            sql.get_user("testUser1")
        assert sql.get_user("testUser1") is not None
        with sql.tx.read() as conn:  # and the new one never waits either
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 0


def test_a_read_on_the_loop_never_waits_for_the_loop_connection(sql: SqlStorage) -> None:
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with sql.reading_on_loop(), sql.tx.read():
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    try:
        started = time.monotonic()
        with pytest.raises(ReaderBusy), sql.reading_on_loop():
            sql.get_user("testUser1")
        assert time.monotonic() - started < 1
    finally:
        release.set()
        holder.join(10)


def test_read_only_runs_on_the_loop_and_falls_back_to_a_thread_when_busy(sql: SqlStorage) -> None:
    runtime = cast(Runtime, SimpleNamespace(storage=sql))

    async def both() -> tuple[Any, Any, int]:
        loop_thread = threading.get_ident()
        on_loop = await read_only(runtime, lambda: credits(sql))
        with sql.reading_on_loop(), sql.tx.read():  # the loop's connection is taken meanwhile
            on_thread = await read_only(runtime, lambda: credits(sql))
        return on_loop, on_thread, loop_thread

    on_loop, on_thread, loop_thread = asyncio.run(both())
    assert on_loop[:2] == on_thread[:2] == (100, 1)
    assert on_loop[2] == loop_thread and on_thread[2] != loop_thread
