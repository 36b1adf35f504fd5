"""PostgreSQL: a process keeps at most POSTGRES_POOL_SIZE connections and reuses them.

Reads beyond the pool's size wait for a lent connection rather than open one for themselves: each
new connection starts a backend on the server, and overflow connections were closed again on
return, so a busy API process (its thread pool reading for 64 clients) paid a connection per
request. Many more threads than connections still all get their answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event

from imagegen import service
from imagegen.storage.sql.adapter import SqlStorage
from imagegen.storage.sql.engine import POSTGRES_POOL_SIZE
from tests.support import migrated_sql


@pytest.fixture
def pg(postgres_url: str) -> Iterator[SqlStorage]:
    yield from migrated_sql(postgres_url)


def test_many_more_concurrent_reads_than_connections_share_the_pool_without_opening_more(
    pg: SqlStorage,
) -> None:
    opened: list[int] = []
    event.listen(pg.engine, "connect", lambda *_: opened.append(1))
    threads = 4 * POSTGRES_POOL_SIZE

    def read(n: int) -> int:
        user, _ = service.get_credits(pg, "testUser1", limit=50, cursor=None)
        return user.credits

    with ThreadPoolExecutor(threads) as pool:
        for _ in range(3):  # rounds: connections opened in the first are reused in the next
            assert list(pool.map(read, range(threads * 5))) == [100] * threads * 5

    assert 0 < len(opened) <= POSTGRES_POOL_SIZE
