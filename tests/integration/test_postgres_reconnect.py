"""PostgreSQL connections that died (a server restart, a failover) are replaced, without pre-ping.

The pool does not test a connection each time it lends it (a round trip per transaction). A dead
one fails the one call that used it, as 'database unavailable' (a 503 for an HTTP client), and
SQLAlchemy then replaces every connection of the pool opened before the failure: the calls after
it work, reads and the group-committed debits (and the event loop's own connection) alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from imagegen.clock import utcnow
from imagegen.domain.errors import StorageUnavailable
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import new_generation
from tests.support import migrated_sql


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[SqlStorage]:
    async for storage in migrated_sql(postgres_url):
        yield storage


def kill_connections(url: str) -> int:
    database = make_url(url).database
    with psycopg.connect(url, autocommit=True) as admin:
        return len(
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
        )


async def test_the_pool_recovers_after_its_connections_were_killed(pg: SqlStorage, postgres_url: str) -> None:
    # Several pooled connections and the writer's, all open.
    await asyncio.gather(*(pg.get_user("testUser1") for _ in range(4)))
    await pg.debit_and_enqueue(new_generation(created_at=utcnow()))

    assert kill_connections(postgres_url) >= 1

    failures = 0
    for _ in range(3):
        try:
            await pg.get_user("testUser1")
        except StorageUnavailable:
            failures += 1
    assert failures <= 1
    user = await pg.get_user("testUser1")
    assert user is not None and user.credits == 99

    debit_failures = 0
    for _ in range(3):
        try:
            await pg.debit_and_enqueue(new_generation(created_at=utcnow()))
        except StorageUnavailable:
            debit_failures += 1
    assert debit_failures <= 1
    user = await pg.get_user("testUser1")
    assert user is not None and user.credits == 99 - (3 - debit_failures)
