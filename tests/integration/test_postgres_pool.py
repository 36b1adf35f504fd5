"""PostgreSQL connections and plans: a process keeps at most POSTGRES_POOL_SIZE connections and
reuses them, and its polled queries stay cheap in PostgreSQL's generic plans.

Reads beyond the pool's size wait for a lent connection rather than open one for themselves: each
new connection starts a backend on the server, and overflow connections were closed again on
return, so a busy API process (its threads reading for 64 clients) paid a connection per request.
Many more concurrent reads than connections still all get their answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from imagegen.clock import utcnow
from imagegen.ports import Lease
from imagegen.storage.sql.adapter import SqlStorage
from imagegen.storage.sql.engines import POSTGRES_POOL_SIZE
from tests.support import migrated_sql


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[SqlStorage]:
    async for storage in migrated_sql(postgres_url):
        yield storage


async def test_many_more_concurrent_reads_than_connections_share_the_pool_without_opening_more(
    pg: SqlStorage,
) -> None:
    opened: list[int] = []
    event.listen(pg.engine, "connect", lambda *_: opened.append(1))
    readers = 4 * POSTGRES_POOL_SIZE

    async def read() -> int:
        user = await pg.get_user("testUser1")  # what getUserCredits reads
        await pg.ledger("testUser1", 50, None)
        assert user is not None
        return user.credits

    for _ in range(3):  # rounds: connections opened in the first are reused in the next
        assert await asyncio.gather(*(read() for _ in range(readers * 5))) == [100] * readers * 5

    assert 0 < len(opened) <= POSTGRES_POOL_SIZE


async def test_an_idle_workers_claim_uses_the_pending_index_even_in_postgresqls_generic_plans(
    postgres_url: str,
) -> None:
    """psycopg prepares a statement after 5 executions, and PostgreSQL may then plan it once for
    any parameters. `status = $1` cannot use the partial index on pending requests there: idle
    workers, polling, then walked every request ever made (a busy core once there were 10,000s)."""
    database = make_url(postgres_url).database
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} SET plan_cache_mode = force_generic_plan")
    async for storage in migrated_sql(postgres_url):
        with storage.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO generation_requests (id, user_id, model, style, color, size, prompt, cost,"
                " status, attempts, created_at) SELECT 'r' || g, 'testUser1', 'model-a', 'anime',"
                " 'vibrant', '512x512', 'p', 1, 'completed', 1, now() FROM generate_series(1, 2000) g"
            )
        now = utcnow()
        for _ in range(20):  # prepared after 5, generic from then on
            assert await storage.claim_job(Lease("w", now), now) is None
            assert await storage.expired_jobs(now) == []
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # the storage closed: stats flushed
        admin.execute("SELECT pg_stat_force_next_flush()")
        rows_read = admin.execute(
            "SELECT seq_tup_read + idx_tup_fetch, seq_scan, idx_scan FROM pg_stat_user_tables"
            " WHERE relname = 'generation_requests'"
        ).fetchone()
    assert rows_read is not None and rows_read[0] < 2000  # not one walk over the requests
