"""Helpers the end-to-end tests share: look into a server's data folder, its ledger, its audit."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.support import Server, ServerFactory, run_cli

T = TypeVar("T")


def query_db(data_dir: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from the server's SQLite file, opened read-only (WAL lets us read beside the server)."""
    uri = f"file:{data_dir / 'imagegen.db'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
        return conn.execute(sql, params).fetchall()


def tamper_db(data_dir: Path, sql: str, *params: Any) -> None:
    """Writes straight into the SQLite file, as an operator (or a bug) might, bypassing imagegen."""
    with closing(sqlite3.connect(data_dir / "imagegen.db", timeout=10)) as conn:
        conn.execute(sql, params)
        conn.commit()


def request_count(data_dir: Path) -> int:
    return int(query_db(data_dir, "SELECT count(*) FROM generation_requests")[0][0])


def request_statuses(data_dir: Path) -> dict[str, str]:
    return dict(query_db(data_dir, "SELECT id, status FROM generation_requests"))  # type: ignore[arg-type]


def credits_of(client: httpx.Client, user_id: str) -> dict[str, Any]:
    """The case study's balance and the whole ledger (one page of up to 200 entries)."""
    response = client.get("/getUserCredits", params={"userId": user_id, "limit": "200"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["nextCursor"] is None, "the ledger has more than one page; these tests expect one"
    return body


def create_user(server: Server, user_id: str, credits: int) -> str:
    """Creates a user through the admin route and returns the user's API key."""
    with server.client(server.keys()["admin"]) as admin:
        response = admin.post("/v1/admin/users", json={"userId": user_id, "credits": credits})
    assert response.status_code == 201, response.text
    key: str = response.json()["apiKey"]
    return key


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("verify", "--data-dir", str(data_dir), check=False)


def assert_verified(data_dir: Path) -> None:
    result = verify(data_dir)
    assert result.returncode == 0, f"imagegen verify found violations:\n{result.stdout}{result.stderr}"


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Calls `probe` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def started(tmp_path_factory: pytest.TempPathFactory, name: str, **env: str) -> Iterator[Server]:
    """A server with its own data folder, stopped when the fixture that yields from this ends."""
    factory = ServerFactory(tmp_path_factory.mktemp(name))
    try:
        yield factory.start(**env)
    finally:
        factory.stop_all()
