"""Shared fixtures: a fresh database per test on every SQL backend there is, and a real server."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from imagegen.ports import Storage
from imagegen.storage.sql.database import SqlDatabase
from tests.firestore_emulator import firestore_clean, firestore_emulator, firestore_storage  # noqa: F401
from tests.support import ServerFactory, memory_storage, migrated_sql

POSTGRES_ENV = "IMAGEGEN_TEST_POSTGRES_URL"


def require_or_skip(reason: str) -> None:
    """CI sets IMAGEGEN_REQUIRE_SERVICES: there a missing service fails the run instead of skipping."""
    if os.environ.get("IMAGEGEN_REQUIRE_SERVICES"):
        pytest.fail(f"{reason} (IMAGEGEN_REQUIRE_SERVICES is set, so this is mandatory)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database; each test clones it, which is faster than migrating again."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        require_or_skip(f"PostgreSQL tests need {POSTGRES_ENV}")
    name = f"imagegen_template_{os.getpid()}"
    _admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}")
    # The synchronous database under the adapter: this fixture may first be asked for by an async
    # one (`storage`), on a running event loop.
    database = SqlDatabase(_with_database(url, name))
    database.migrate()
    database.close()
    yield name
    _admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_url(postgres_template: str, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from fresh_postgres_database(postgres_template, request.node.nodeid)


def fresh_postgres_database(template: str, label: str) -> Iterator[str]:
    """A database cloned from the migrated template for the test (or module) named `label`."""
    base = os.environ[POSTGRES_ENV]
    name = f"imagegen_t_{os.getpid()}_{abs(hash(label)) % 10**8}"
    _admin(
        base,
        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
        f"CREATE DATABASE {name} TEMPLATE {template}",
    )
    yield _with_database(base, name)
    _admin(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _admin(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _with_database(url: str, name: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'imagegen.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'imagegen.db'}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; each test's database is a copy, which is faster than migrating."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    database = SqlDatabase(f"sqlite:///{path}")
    database.migrate()
    database.close()  # the last connection closing checkpoints the WAL into the file copied
    return path


@pytest.fixture(params=["memory", "sqlite", "postgres", "firestore"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A migrated database with the initial data set (testUser1: 100, testUser2: 10).

    In memory, on SQLite, PostgreSQL and Firestore (the emulator, see tests/firestore_emulator.py:
    there, and in memory, a test that uses `storage.engine` is SQL-only and skips).
    """
    opened: AsyncIterator[Storage]
    if request.param == "firestore":
        opened = firestore_storage(request)
    elif request.param == "memory":
        opened = memory_storage()
    elif request.param == "sqlite":
        path = tmp_path / "imagegen.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        opened = migrated_sql(f"sqlite:///{path}", migrate=False)
    else:
        opened = migrated_sql(str(request.getfixturevalue("postgres_url")))
    async for storage in opened:
        yield storage


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path)
    yield factory
    factory.stop_all()
