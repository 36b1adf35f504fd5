"""The SQL adapter's group-committing writer: many calls share a transaction, each stays atomic alone.

A batch is formed by holding the writer thread inside a first call while the others queue up; when
it is released, the queued calls run as one batch (they share one `Batch` dict). Whether PostgreSQL
sent a batch pipelined is seen at the driver: psycopg's `Connection.pipeline()` is entered.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, event, func, insert, select, text
from sqlalchemy.exc import IntegrityError

from imagegen.domain.errors import InsufficientCredits, StaleConfig
from imagegen.domain.generation import NewGeneration, Status
from imagegen.domain.ledger import EntryType
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.adapter import SqlStorage
from imagegen.storage.sql.calls import Batch
from imagegen.storage.sql.generations import Debit
from tests.integration.builders import T0, balance, enqueue, lease, new_generation
from tests.support import migrated_sql

Call = Callable[[Connection, Batch], Any]


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator[SqlStorage]:
    async for storage in migrated_sql(database_url):
        yield storage


@contextmanager
def one_batch(storage: SqlStorage) -> Iterator[Callable[[Call], Future[Any]]]:
    """Calls submitted inside the block run in one batch, after it ends."""
    entered, release = threading.Event(), threading.Event()

    def hold(conn: Connection, batch: Batch) -> None:
        entered.set()
        assert release.wait(30)

    held = storage.writes.submit(hold)
    assert entered.wait(30)
    futures: list[Future[Any]] = []

    def submit(call: Call) -> Future[Any]:
        futures.append(storage.writes.submit(call, order=f"{len(futures):04d}"))
        return futures[-1]

    try:
        yield submit
    finally:
        release.set()
        held.result(30)
        for future in futures:
            future.exception(30)  # wait for the batch, whatever its outcome


def grant(user_id: str, amount: int) -> Call:
    def call(conn: Connection, batch: Batch) -> int:
        batch.setdefault("calls", []).append(user_id)
        row = conn.execute(
            t.users.update()
            .where(t.users.c.id == user_id)
            .values(credits=t.users.c.credits + amount)
            .returning(t.users.c.credits)
        ).one()
        return int(row.credits)

    return call


async def test_queued_calls_share_one_transaction_and_each_gets_its_own_result(sql: SqlStorage) -> None:
    for n in range(5):
        await sql.create_user(f"u{n}", 10, T0)
    with one_batch(sql) as submit:
        futures = [submit(grant(f"u{n}", n + 1)) for n in range(5)]
    assert [future.result() for future in futures] == [11, 12, 13, 14, 15]
    assert [await balance(sql, f"u{n}") for n in range(5)] == [11, 12, 13, 14, 15]


async def test_a_call_that_fails_after_writing_is_undone_alone_and_the_rest_of_its_batch_commits(
    sql: SqlStorage,
) -> None:
    for user in ("before", "failing", "after"):
        await sql.create_user(user, 10, T0)

    def write_then_fail(conn: Connection, batch: Batch) -> None:
        grant("failing", 1000)(conn, batch)
        raise InsufficientCredits("refused after writing")

    with one_batch(sql) as submit:
        first = submit(grant("before", 1))
        failing = submit(write_then_fail)
        last = submit(grant("after", 2))

    assert first.result() == 11 and last.result() == 12
    assert isinstance(failing.exception(), InsufficientCredits)
    assert (await balance(sql, "before"), await balance(sql, "failing"), await balance(sql, "after")) == (
        11,
        10,
        12,
    )


async def test_a_batch_whose_commit_fails_fails_every_call_and_writes_nothing(tmp_path: Path) -> None:
    # SQLite checks deferred foreign keys at COMMIT: one bad call makes the whole commit fail.
    storage = SqlStorage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await storage.migrate()
    await storage.create_user("u", 10, T0)

    def orphan_entry(conn: Connection, batch: Batch) -> None:
        conn.execute(text("PRAGMA defer_foreign_keys = ON"))
        conn.execute(
            insert(t.ledger).values(
                id="orphan", user_id="nobody", type="grant", delta=1, balance_after=1, created_at=T0
            )
        )

    try:
        with one_batch(storage) as submit:
            good = submit(grant("u", 5))
            bad = submit(orphan_entry)
        assert good.exception() is not None and bad.exception() is not None
        assert await balance(storage, "u") == 10
        with storage.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(t.ledger)).scalar() == 1  # the opening grant
    finally:
        await storage.close()


async def test_debits_from_many_tasks_each_land_once_and_the_broke_are_refused(sql: SqlStorage) -> None:
    await sql.create_user("rich", 1000, T0)
    await sql.create_user("broke", 3, T0)

    async def create(n: int) -> bool:
        user = "broke" if n % 4 == 0 else "rich"
        try:
            await sql.debit_and_enqueue(new_generation(user))
        except InsufficientCredits:
            return False
        return True

    results: list[bool] = []

    async def run(task: int) -> None:
        for n in range(task, 200, 16):
            results.append(await create(n))

    await asyncio.gather(*(run(n) for n in range(16)))

    assert len(results) == 200
    assert results.count(True) == 150 + 3 and results.count(False) == 50 - 3
    assert (await balance(sql, "rich"), await balance(sql, "broke")) == (1000 - 150, 0)
    assert await sql.violations() == []


async def test_a_debit_priced_under_an_old_configuration_version_is_refused_and_writes_nothing(
    sql: SqlStorage,
) -> None:
    version, catalog = await sql.config_snapshot()
    new = priced(catalog)
    await sql.put_option("sizes", "512x512", enabled=True, cost=5)  # another process reprices
    assert await sql.config_version() != version

    with pytest.raises(StaleConfig):
        on_writer(sql, new, version).result(30)
    assert await balance(sql, "testUser1") == 100
    fresh_version, fresh = await sql.config_snapshot()
    created, _ = on_writer(sql, priced(fresh), fresh_version).result(30)
    assert created.cost == 5 and await balance(sql, "testUser1") == 95


# -- PostgreSQL pipelines a batch of debits: sent together, results read after one round trip --------
@pytest.fixture
def pipelined(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One entry per batch the writer sent pipelined (PostgreSQL only; SQLite runs them whole)."""
    entered: list[str] = []
    original = psycopg.Connection.pipeline

    def pipeline(conn: psycopg.Connection[Any]) -> Any:
        entered.append("pipeline")
        return original(conn)

    monkeypatch.setattr(psycopg.Connection, "pipeline", pipeline)
    return entered


def priced(catalog: Any, user_id: str = "testUser1") -> NewGeneration:
    """A 512x512 create priced from `catalog`."""
    return new_generation(user_id, cost=catalog.sizes["512x512"])


def on_writer(sql: SqlStorage, new: NewGeneration, version: str | None = None) -> Future[Any]:
    """The create's debit queued for the writer thread (as the loop hands over one it cannot send)."""
    return sql.writes.submit(Debit(new, version, sql.dialect), order=new.spec.user_id)


def debits_in_one_batch(sql: SqlStorage, news: list[tuple[NewGeneration, str | None]]) -> list[Future[Any]]:
    futures: list[Future[Any]] = []
    with one_batch(sql):
        futures = [on_writer(sql, new, version) for new, version in news]
    for future in futures:
        future.exception(30)
    return futures


async def test_a_batch_of_debits_commits_each_with_its_request_and_ledger_entry(
    sql: SqlStorage, pipelined: list[int]
) -> None:
    version, catalog = await sql.config_snapshot()
    for n in range(6):
        await sql.create_user(f"p{n}", 10, T0)
    news = [priced(catalog, f"p{n}") for n in range(6)]
    futures = debits_in_one_batch(sql, [(new, version) for new in news])

    assert [future.result()[0].id for future in futures] == [new.id for new in news]
    assert [await balance(sql, f"p{n}") for n in range(6)] == [9] * 6
    for n, new in enumerate(news):
        assert await sql.get_request(new.id) == futures[n].result()[0]
        assert [
            (e.type, e.delta, e.generation_request_id) for e in (await sql.ledger(f"p{n}", 1, None)).items
        ] == [(EntryType.DEDUCTION, -1, new.id)]
    assert await sql.violations() == []
    if sql.tx.dialect == "postgresql":
        assert pipelined == ["pipeline"]  # one batch, sent pipelined


async def test_a_refused_or_failing_debit_in_a_pipelined_batch_is_undone_alone(
    sql: SqlStorage, pipelined: list[int]
) -> None:
    version, catalog = await sql.config_snapshot()
    await sql.create_user("ok", 10, T0)
    await sql.create_user("broke", 0, T0)

    def new(user: str) -> NewGeneration:
        return priced(catalog, user)

    first, refused, last = new("ok"), new("broke"), new("ok")
    duplicate = replace(new("ok"), id=first.id)  # the same request id twice: a unique violation
    futures = debits_in_one_batch(
        sql, [(first, version), (refused, version), (duplicate, version), (last, version)]
    )

    assert futures[0].result()[0].id == first.id and futures[3].result()[0].id == last.id
    assert isinstance(futures[1].exception(), InsufficientCredits)
    assert isinstance(futures[2].exception(), IntegrityError)
    assert (await balance(sql, "ok"), await balance(sql, "broke")) == (8, 0)
    assert await sql.violations() == []
    if sql.tx.dialect == "postgresql":
        assert pipelined == ["pipeline"]  # tried pipelined, then rerun the careful way


async def test_a_stale_debit_in_a_pipelined_batch_is_refused_and_the_rest_commit(
    sql: SqlStorage, pipelined: list[int]
) -> None:
    old_version, old_catalog = await sql.config_snapshot()
    stale = priced(old_catalog)
    await sql.put_option("sizes", "512x512", enabled=True, cost=5)  # another process reprices
    version, catalog = await sql.config_snapshot()
    fresh, uncached = priced(catalog), priced(catalog)

    futures = debits_in_one_batch(sql, [(fresh, version), (stale, old_version), (uncached, None)])

    assert isinstance(futures[1].exception(), StaleConfig)
    assert futures[0].result()[0].cost == 5 and futures[2].result()[0].cost == 5
    assert await balance(sql, "testUser1") == 90
    assert await sql.get_request(stale.id) is None


async def test_a_batch_with_an_idempotency_key_runs_whole_and_replays_the_duplicate(
    sql: SqlStorage, pipelined: list[int]
) -> None:
    version, catalog = await sql.config_snapshot()

    def new(key: str | None) -> NewGeneration:
        return replace(priced(catalog), idempotency_key=key, fingerprint="f" if key else None)

    keyed, again, plain = new("k-1"), new("k-1"), new(None)
    futures = debits_in_one_batch(sql, [(keyed, version), (again, version), (plain, version)])

    assert futures[0].result() == (futures[0].result()[0], True)
    assert futures[1].result()[0].id == keyed.id and futures[1].result()[1] is False
    assert futures[2].result()[1] is True
    assert await balance(sql, "testUser1") == 98
    assert pipelined == []


async def test_revoking_a_key_changes_the_configuration_version(sql: SqlStorage) -> None:
    key = await sql.add_api_key("k1", "0" * 64, "testUser1", T0)
    before = await sql.config_version()
    assert await sql.revoke_api_key(key.id, T0 + timedelta(seconds=1))
    assert await sql.config_version() != before
    assert [e.type for e in (await sql.ledger("testUser1", 10, None)).items] == [EntryType.GRANT]


async def test_the_writers_driver_statements_store_timestamps_exactly_as_sqlalchemy_does(
    sql: SqlStorage,
) -> None:
    # On SQLite timestamps are text compared as text: '... 09:00:00' would sort before
    # '... 09:00:00.000000' and fall out of a report's range. T0 has no microseconds on purpose.
    await sql.create_user("stamped", 10, T0)  # written through SQLAlchemy
    on_writer(sql, new_generation("stamped")).result(30)
    with sql.engine.connect() as conn:
        user_stamp = conn.execute(text("SELECT created_at FROM users WHERE id = 'stamped'")).scalar()
        stamps = conn.execute(
            text(
                "SELECT created_at FROM generation_requests WHERE user_id = 'stamped' "
                "UNION ALL SELECT created_at FROM ledger_entries "
                "WHERE user_id = 'stamped' AND type = 'deduction'"
            )
        ).scalars()
        assert list(stamps) == [user_stamp, user_stamp]
    assert [r.created_at for r in (await sql.list_requests("stamped", None, 10, None)).items] == [T0]


# -- the event loop's batches (SQLite: debits from the HTTP handlers run on the loop itself) ----------
async def test_calls_submitted_in_one_turn_of_the_loop_commit_together_with_their_own_results(
    sql: SqlStorage,
) -> None:
    for n in range(4):
        await sql.create_user(f"loop{n}", 10, T0)
    batches: list[int] = []

    def fail_after_writing(conn: Connection, batch: Batch) -> None:
        grant("loop3", 1000)(conn, batch)
        raise InsufficientCredits("refused after writing")

    def remember(call: Call) -> Call:
        def run(conn: Connection, batch: Batch) -> Any:
            batches.append(id(batch))
            return call(conn, batch)

        return run

    async def main() -> list[Any]:
        calls = [remember(grant(f"loop{n}", n + 1)) for n in range(3)] + [remember(fail_after_writing)]
        return await asyncio.gather(
            *(sql.writes.submit_from_loop(call, order=str(n)) for n, call in enumerate(calls)),
            return_exceptions=True,
        )

    results = await main()
    assert results[:3] == [11, 12, 13] and isinstance(results[3], InsufficientCredits)
    assert [await balance(sql, f"loop{n}") for n in range(4)] == [11, 12, 13, 10]
    if sql.tx.dialect == "sqlite":  # PostgreSQL's calls go to the writer thread, batched there
        assert len(set(batches[:4])) == 1  # the first, optimistic run: one transaction


async def test_the_loop_never_waits_for_a_writer_of_another_process_and_its_calls_complete_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    storage = SqlStorage(f"sqlite:///{path}")
    await storage.migrate()
    await storage.create_user("waiting", 10, T0)
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection
    other.execute("BEGIN IMMEDIATE")  # it holds the write lock

    async def main() -> tuple[int, int]:
        debit = asyncio.ensure_future(storage.writes.submit_from_loop(grant("waiting", 5)))
        ticks = 0
        while ticks < 20:  # the loop keeps turning while the write lock is taken
            await asyncio.sleep(0.005)
            ticks += 1
        assert not debit.done()
        other.execute("COMMIT")
        return ticks, await asyncio.wait_for(debit, 30)

    try:
        ticks, credits = await main()
    finally:
        other.close()
        await storage.close()
    assert ticks == 20 and credits == 15


@pytest.fixture
async def on_sqlite(sqlite_url: str) -> AsyncIterator[SqlStorage]:
    async for storage in migrated_sql(sqlite_url):
        yield storage


async def test_on_sqlite_the_claims_and_completions_of_jobs_that_end_together_share_a_transaction(
    on_sqlite: SqlStorage,
) -> None:
    sql = on_sqlite
    jobs = [await enqueue(sql) for _ in range(6)]
    writes: list[str] = []
    event.listen(sql.engine, "begin", lambda conn: writes.append("begin"))

    async def while_the_writer_is_busy(calls: list[Awaitable[Any]]) -> list[Any]:
        with one_batch(sql):  # the writer is held: what the workers send meanwhile queues up
            tasks = [asyncio.ensure_future(call) for call in calls]
            await asyncio.sleep(0.05)
        return await asyncio.gather(*tasks)

    claimed = await while_the_writer_is_busy([sql.claim_job(lease(f"w{n}"), T0) for n in range(6)])
    assert sorted(job.id for job in claimed) == sorted(job.id for job in jobs)  # each once
    assert len(writes) == 2  # the held call's transaction, then all six claims in one
    writes.clear()
    done = await while_the_writer_is_busy(
        [sql.complete(job.id, f"w{n}", f"/images/{job.id}.png", T0) for n, job in enumerate(claimed)]
    )
    assert done == [True] * 6 and len(writes) == 2
    assert [(await sql.get_request(job.id)).status for job in jobs] == [Status.COMPLETED] * 6  # type: ignore[union-attr]
