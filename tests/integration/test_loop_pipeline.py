"""PostgreSQL: the creates an event loop submits are debited by the loop itself, pipelined.

The calls submitted in one turn of the loop go out as one batch on the loop's async connection; the
writer thread runs only what the loop hands it: a debit that moved nothing (to say why), a batch
with a failed statement or check (the careful way), a batch whose connection broke. Each test
checks the money as well as the answers, and the audit (`violations()`) at the end.

What ran where is observed from outside: the writer thread's transactions are the engine's (its
"begin" events, on the thread named imagegen-writer); the loop's own connection is the one named
imagegen-loop in pg_stat_activity.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, event
from sqlalchemy.exc import IntegrityError

from imagegen.domain.catalog import Catalog
from imagegen.domain.errors import InsufficientCredits, StaleConfig, StorageUnavailable
from imagegen.domain.generation import NewGeneration
from imagegen.domain.ledger import EntryType
from imagegen.storage.sql.adapter import SqlStorage
from imagegen.storage.sql.loop_pipeline import LOOP_APPLICATION_NAME, LoopStatement, execution_groups
from imagegen.storage.sql.statements import DEBIT_ROWS, JOBS_CHANNEL
from tests.integration.builders import T0, balance, new_generation
from tests.support import migrated_sql


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[SqlStorage]:
    async for storage in migrated_sql(postgres_url):
        yield storage


@pytest.fixture
def handed_over(pg: SqlStorage) -> Iterator[list[str]]:
    """The transactions the writer thread began (what the loop handed it), one entry each."""
    begun: list[str] = []

    def begin(_: Connection) -> None:
        if threading.current_thread().name == "imagegen-writer":
            begun.append("writer")

    event.listen(pg.engine, "begin", begin)
    yield begun
    event.remove(pg.engine, "begin", begin)


def prepared(user: str, catalog: Catalog) -> NewGeneration:
    """A 512x512 create of `user`, priced from `catalog`."""
    return new_generation(user, cost=catalog.sizes["512x512"])


async def debit_together(pg: SqlStorage, news: list[tuple[NewGeneration, str | None]]) -> list[Any]:
    """Submits every debit in one turn of the event loop; their results (or errors), in order."""
    return await asyncio.gather(
        *(pg.debit_and_enqueue(new, version) for new, version in news), return_exceptions=True
    )


async def loop_connection_pid(pg: SqlStorage) -> int:
    """The backend of the loop's own connection (it names itself in pg_stat_activity)."""
    query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"
    async with await psycopg.AsyncConnection.connect(_conninfo(pg), autocommit=True) as admin:
        (pid,) = await (await admin.execute(query, (LOOP_APPLICATION_NAME,))).fetchone()  # type: ignore[misc]
        return int(pid)


def _conninfo(pg: SqlStorage) -> str:
    return pg.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def test_a_turn_of_the_loop_debits_its_creates_in_one_batch_without_the_writer_thread(
    pg: SqlStorage, handed_over: list[int]
) -> None:
    version, catalog = await pg.config_snapshot()
    for n in range(6):
        await pg.create_user(f"u{n}", 10, T0)
    news = [prepared(f"u{n}", catalog) for n in range(6)]

    results = await debit_together(pg, [(new, version) for new in news])

    assert [(request.id, fresh) for request, fresh in results] == [(new.id, True) for new in news]
    assert [await balance(pg, f"u{n}") for n in range(6)] == [9] * 6
    for n, new in enumerate(news):
        assert await pg.get_request(new.id) == results[n][0]
        assert [
            (e.type, e.delta, e.generation_request_id) for e in (await pg.ledger(f"u{n}", 1, None)).items
        ] == [(EntryType.DEDUCTION, -1, new.id)]
    assert handed_over == []  # all of it ran on the loop
    assert await pg.violations() == []


async def test_a_refused_debit_is_handed_to_the_writer_which_says_why_and_the_rest_commit_on_the_loop(
    pg: SqlStorage, handed_over: list[int]
) -> None:
    version, catalog = await pg.config_snapshot()
    await pg.create_user("ok", 10, T0)
    await pg.create_user("broke", 0, T0)
    news = [prepared(user, catalog) for user in ("ok", "broke", "ok")]

    results = await debit_together(pg, [(new, version) for new in news])

    assert results[0][0].id == news[0].id and results[2][0].id == news[2].id
    assert isinstance(results[1], InsufficientCredits)
    assert (await balance(pg, "ok"), await balance(pg, "broke")) == (8, 0)
    assert await pg.get_request(news[1].id) is None
    assert len(handed_over) == 1  # the writer said why, in one transaction
    assert await pg.violations() == []


async def test_a_batch_with_a_failing_statement_is_rolled_back_and_rerun_the_careful_way(
    pg: SqlStorage, handed_over: list[int]
) -> None:
    version, catalog = await pg.config_snapshot()
    first, last = prepared("testUser1", catalog), prepared("testUser1", catalog)
    duplicate = replace(prepared("testUser1", catalog), id=first.id)  # a unique violation

    results = await debit_together(pg, [(first, version), (duplicate, version), (last, version)])

    assert results[0][0].id == first.id and results[2][0].id == last.id
    assert isinstance(results[1], IntegrityError)
    assert await balance(pg, "testUser1") == 98  # the duplicate's debit undone, the others once each
    assert handed_over  # the writer reran the batch the careful way
    assert await pg.violations() == []


async def test_a_debit_priced_with_a_stale_configuration_is_handed_over_and_refused_the_rest_commit(
    pg: SqlStorage, handed_over: list[int]
) -> None:
    old_version, old_catalog = await pg.config_snapshot()
    stale = prepared("testUser1", old_catalog)
    await pg.put_option("sizes", "512x512", enabled=True, cost=5)  # another process reprices
    version, catalog = await pg.config_snapshot()
    fresh = prepared("testUser1", catalog)

    results = await debit_together(pg, [(fresh, version), (stale, old_version)])

    assert results[0][0].cost == 5 and isinstance(results[1], StaleConfig)
    assert await balance(pg, "testUser1") == 95 and await pg.get_request(stale.id) is None
    assert len(handed_over) == 1  # only the stale one: the fresh one committed on the loop


async def test_creates_with_an_idempotency_key_go_to_the_writer_thread(
    pg: SqlStorage, handed_over: list[int]
) -> None:
    version, catalog = await pg.config_snapshot()
    keyed = replace(prepared("testUser1", catalog), idempotency_key="k-1", fingerprint="f")
    again = replace(prepared("testUser1", catalog), idempotency_key="k-1", fingerprint="f")

    results = await debit_together(pg, [(keyed, version), (again, version)])

    assert results[0] == (results[0][0], True) and results[1] == (results[0][0], False)
    assert await balance(pg, "testUser1") == 99
    assert handed_over  # the writer ran them (a replay needs the key's request read)


async def test_a_loop_connection_killed_while_idle_is_replaced_before_the_next_batch(
    pg: SqlStorage, postgres_url: str, handed_over: list[int]
) -> None:
    version, catalog = await pg.config_snapshot()

    async def main() -> list[Any]:
        first = await pg.debit_and_enqueue(prepared("testUser1", catalog), version)
        pid = await loop_connection_pid(pg)
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # the loop's connection dies
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until it has
        second = await pg.debit_and_enqueue(prepared("testUser1", catalog), version)
        third = await pg.debit_and_enqueue(prepared("testUser1", catalog), version)
        return [first, second, third]

    results = await main()

    assert all(fresh for _, fresh in results)
    assert await balance(pg, "testUser1") == 97
    assert handed_over == []  # the dead connection was noticed and replaced before sending
    assert await pg.violations() == []


async def test_a_connection_lost_with_a_batch_out_fails_its_calls_as_unavailable_and_reconnects(
    pg: SqlStorage, postgres_url: str, handed_over: list[int]
) -> None:
    """Whether a batch lost in flight committed is unknown: its callers hear so, nobody reruns it."""
    version, catalog = await pg.config_snapshot()
    await pg.create_user("slow", 10, T0)

    async def main() -> list[Any]:
        await pg.debit_and_enqueue(prepared("slow", catalog), version)  # the loop's connection
        pid = await loop_connection_pid(pg)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_advisory_lock(42)")  # the batch's statement will wait for it
            admin.execute(
                "CREATE FUNCTION wait_for_lock() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_advisory_lock_shared(42); RETURN NEW; END $$"
            )
            admin.execute(
                "CREATE TRIGGER wait BEFORE INSERT ON ledger_entries"
                " FOR EACH ROW EXECUTE FUNCTION wait_for_lock()"
            )
            lost = asyncio.ensure_future(pg.debit_and_enqueue(prepared("slow", catalog), version))
            while not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", (pid,)
            ).fetchone():
                await asyncio.sleep(0.01)
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            admin.execute("DROP TRIGGER wait ON ledger_entries")
            admin.execute("DROP FUNCTION wait_for_lock()")
        first = await asyncio.gather(lost, return_exceptions=True)
        after = await pg.debit_and_enqueue(prepared("slow", catalog), version)
        return [*first, after]

    lost, after = await main()

    assert isinstance(lost, StorageUnavailable)
    assert after[1] is True  # the next batch reconnected
    assert await balance(pg, "slow") == 8 and handed_over == []  # the lost one did not commit, nor ran again
    assert await pg.violations() == []


async def test_a_batch_wakes_the_job_workers_once_and_a_batch_that_debits_nothing_does_not(
    pg: SqlStorage, postgres_url: str
) -> None:
    version, catalog = await pg.config_snapshot()
    await pg.create_user("broke", 0, T0)
    with psycopg.connect(postgres_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {JOBS_CHANNEL}")
        await debit_together(pg, [(prepared("broke", catalog), version)])
        assert list(listener.notifies(timeout=0.5)) == []
        users = ["testUser1", "testUser2", "testUser1"]  # two executions, one transaction
        await debit_together(pg, [(prepared(user, catalog), version) for user in users])
        assert [note.channel for note in listener.notifies(timeout=0.5)] == [JOBS_CHANNEL]


async def test_many_concurrent_creates_on_two_loops_never_overspend_a_user(
    pg: SqlStorage, postgres_url: str
) -> None:
    """Two storages stand for two API processes; their loops race for the same users' credits."""
    other = SqlStorage(postgres_url)  # the same database, migrated already
    for n in range(4):
        await pg.create_user(f"racer{n}", 25, T0)
    version, catalog = await pg.config_snapshot()

    async def one_process(storage: SqlStorage) -> list[Any]:
        news = [prepared(f"racer{n % 4}", catalog) for n in range(60)]
        results: list[Any] = []
        for start in range(0, 60, 12):  # batches of 12 across several turns of the loop
            results += await asyncio.gather(
                *(storage.debit_and_enqueue(new, version) for new in news[start : start + 12]),
                return_exceptions=True,
            )
        return results

    async def main() -> list[Any]:
        return list(await asyncio.gather(one_process(pg), one_process(other)))

    try:
        first, second = await main()
    finally:
        await other.close()
    results = first + second
    created = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert len(created) == 100 and len(refused) == 20  # 4 users x 25 credits, 120 asks of 1
    assert [await balance(pg, f"racer{n}") for n in range(4)] == [0] * 4
    assert await pg.violations() == []


async def test_one_users_creates_in_one_batch_are_debited_one_after_another_until_the_credits_run_out(
    pg: SqlStorage, handed_over: list[int]
) -> None:
    version, catalog = await pg.config_snapshot()
    await pg.create_user("hot", 5, T0)
    news = [prepared("hot", catalog) for _ in range(8)]

    results = await debit_together(pg, [(new, version) for new in news])

    assert [isinstance(result, tuple) for result in results] == [True] * 5 + [False] * 3
    assert all(isinstance(result, InsufficientCredits) for result in results[5:])
    assert await balance(pg, "hot") == 0
    assert [e.balance_after for e in reversed((await pg.ledger("hot", 10, None)).items)][-5:] == [
        4,
        3,
        2,
        1,
        0,
    ]
    assert handed_over  # the three refused: the writer ran them to say why
    assert await pg.violations() == []


async def test_a_batch_goes_out_as_one_execution_per_turn_of_each_user() -> None:
    def statement(key: str) -> LoopStatement[Any]:
        return LoopStatement(DEBIT_ROWS, {}, key, lambda applied: applied)

    calls = [statement(user) for user in ("a", "b", "a", "c", "a", "b")]

    assert execution_groups(calls) == [[0, 1, 3], [2, 5], [4]]
