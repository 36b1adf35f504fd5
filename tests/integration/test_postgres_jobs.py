"""PostgreSQL: a job's end in one statement, and the NOTIFY that wakes the HTTP handler waiting for it.

A worker's complete, a job's read and its model's settings each cost round trips to the server; on
the worker that also draws the image, they were most of a job's time. A complete of a job without
a webhook is one statement outside any transaction (its UPDATEs and the NOTIFY together), and so
are the single-statement reads. A job with a webhook still completes in a transaction, which also
writes its delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, select

from imagegen.ports import Lease
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql.adapter import SqlStorage
from imagegen.storage.sql.postgres import LISTEN_APPLICATION_NAME
from tests.integration.builders import LEASE, T0, claim, new_generation
from tests.support import migrated_sql


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[SqlStorage]:
    async for storage in migrated_sql(postgres_url):
        yield storage


@pytest.fixture
def done_channel(pg: SqlStorage) -> Iterator[psycopg.Connection]:
    url = pg.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {sql.DONE_CHANNEL}")
        yield conn


def heard(conn: psycopg.Connection) -> list[str]:
    return [note.payload for note in conn.notifies(timeout=1.0, stop_after=1)]


def in_flight(pg: SqlStorage) -> int:
    with pg.engine.connect() as conn:
        return conn.execute(select(sql.users.c.in_flight).where(sql.users.c.id == "testUser1")).scalar_one()


def in_transaction(pg: SqlStorage) -> list[bool]:
    """For each statement from now on, whether psycopg ran it inside a transaction (with a BEGIN
    and a COMMIT of its own, two more round trips)."""
    seen: list[bool] = []

    def record(conn: Any, *_: Any) -> None:
        seen.append(not conn.connection.dbapi_connection.autocommit)

    event.listen(pg.engine, "before_cursor_execute", record)
    return seen


@pytest.mark.parametrize("webhook", [None, "https://hooks.example.com/x"], ids=["plain", "webhook"])
async def test_a_completed_job_is_announced_once_with_its_id_and_leaves_the_in_flight_count(
    pg: SqlStorage, done_channel: psycopg.Connection, webhook: str | None
) -> None:
    new = replace(new_generation(), webhook=webhook, webhook_events=frozenset({"completed"}))
    request, _ = await pg.debit_and_enqueue(new)
    job = await claim(pg, "w-1")
    assert in_flight(pg) == 1

    assert await pg.complete(job.id, "w-1", "/images/x.png", T0)

    assert heard(done_channel) == [request.id]
    assert in_flight(pg) == 0
    assert not await pg.complete(job.id, "w-1", "/images/y.png", T0)  # once: nothing more changes
    assert heard(done_channel) == []


async def test_a_plain_complete_and_single_reads_are_one_statement_each_outside_any_transaction(
    pg: SqlStorage,
) -> None:
    request, _ = await pg.debit_and_enqueue(new_generation())
    statements = in_transaction(pg)

    job = await claim(pg, "w-1")
    assert await pg.complete(job.id, "w-1", "/images/x.png", T0)
    assert await pg.get_request(request.id) is not None
    assert await pg.model_settings("model-a") is not None
    assert (
        await pg.claim_job(Lease("w-1", T0 + LEASE), T0) is None
    )  # an idle worker's poll: one statement too

    assert statements == [False] * 5


async def test_jobs_are_claimed_oldest_first_whether_or_not_they_have_a_webhook(pg: SqlStorage) -> None:
    hooked = replace(new_generation(created_at=T0), webhook="https://hooks.example.com/x")
    first, _ = await pg.debit_and_enqueue(replace(hooked, webhook_events=frozenset({"start"})))
    second, _ = await pg.debit_and_enqueue(new_generation(created_at=T0 + LEASE))
    third, _ = await pg.debit_and_enqueue(replace(hooked, id="third", created_at=T0 + 2 * LEASE))

    assert [(await claim(pg, "w-1")).id for _ in range(3)] == [first.id, second.id, third.id]
    assert await pg.claim_job(Lease("w-1", T0 + LEASE), T0) is None
    assert [d.generation_request_id for d in await pg.claim_webhooks(T0, T0 + LEASE, 10)] == [first.id]


async def test_a_complete_by_another_worker_changes_nothing_and_announces_nothing(
    pg: SqlStorage, done_channel: psycopg.Connection
) -> None:
    await pg.debit_and_enqueue(new_generation())
    job = await claim(pg, "w-1")

    assert not await pg.complete(job.id, "w-2", "/images/x.png", T0)

    assert heard(done_channel) == []
    current = await pg.get_request(job.id)
    assert current is not None and current.status.value == "running" and current.image_url is None


async def test_listen_hears_queued_and_ended_jobs_until_canceled(pg: SqlStorage) -> None:
    jobs: list[str] = []
    done: list[str] = []
    heard = asyncio.Event()

    def on_job() -> None:
        jobs.append("job")
        heard.set()

    def on_done(request_id: str) -> None:
        done.append(request_id)
        heard.set()

    async def next_note() -> None:
        async with asyncio.timeout(10):
            await heard.wait()
        heard.clear()

    listening = asyncio.create_task(pg.listen(on_job, on_done))
    await next_note()  # once listening: anything queued while it was not
    request, _ = await pg.debit_and_enqueue(new_generation())  # NOTIFYs reach every connection
    await next_note()
    job = await claim(pg, "w-1")
    assert await pg.complete(job.id, "w-1", "/images/x.png", T0)
    await next_note()

    assert jobs == ["job", "job"] and done == [request.id]
    listening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await listening


async def test_listen_reconnects_when_its_connection_is_killed(pg: SqlStorage) -> None:
    heard = asyncio.Event()
    listening = asyncio.create_task(pg.listen(heard.set, lambda _: heard.set()))
    try:
        async with asyncio.timeout(10):
            await heard.wait()  # listening
        heard.clear()
        url = pg.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            killed = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = %s",
                (LISTEN_APPLICATION_NAME,),
            )
            assert len(await killed.fetchall()) == 1
        async with asyncio.timeout(10):
            await heard.wait()  # listening again: it looks for what was queued meanwhile
        heard.clear()
        await pg.debit_and_enqueue(new_generation())
        async with asyncio.timeout(10):
            await heard.wait()
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
