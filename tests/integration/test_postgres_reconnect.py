"""PostgreSQL connections that died (a server restart, a failover) are replaced, without pre-ping.

The pool does not test a connection each time it lends it (a round trip per transaction). A dead
one fails the one call that used it, as 'database unavailable' (a 503 for an HTTP client), and
SQLAlchemy then replaces every connection of the pool opened before the failure: the calls after
it work, reads and the group-committed debits alike.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain.errors import StorageUnavailable
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import BODY
from tests.support import migrated_sql


@pytest.fixture
def pg(postgres_url: str) -> Iterator[SqlStorage]:
    yield from migrated_sql(postgres_url)


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


def test_the_pool_recovers_after_its_connections_were_killed(pg: SqlStorage, postgres_url: str) -> None:
    # Several pooled connections and the writer's, all open.
    readers = [threading.Thread(target=pg.get_user, args=("testUser1",)) for _ in range(4)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    new = service.prepare_generation(pg.catalog(), BODY, max_prompt_length=100, now=utcnow())
    pg.submit_debit(new).result(30)

    assert kill_connections(postgres_url) >= 1

    failures = 0
    for _ in range(3):
        try:
            pg.get_user("testUser1")
        except StorageUnavailable:
            failures += 1
    assert failures <= 1
    user = pg.get_user("testUser1")
    assert user is not None and user.credits == 99

    debit_failures = 0
    for _ in range(3):
        new = service.prepare_generation(pg.catalog(), BODY, max_prompt_length=100, now=utcnow())
        try:
            pg.submit_debit(new).result(30)
        except StorageUnavailable:
            debit_failures += 1
    assert debit_failures <= 1
    user = pg.get_user("testUser1")
    assert user is not None and user.credits == 99 - (3 - debit_failures)
