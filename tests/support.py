"""Test support: run the installed `imagegen` command as a real server or a CLI call; open storages."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegen.clock import utcnow
from imagegen.domain.catalog import INITIAL_DATA, Catalog
from imagegen.domain.ids import new_id
from imagegen.ports import Storage
from imagegen.storage.memory import MemoryStorage
from imagegen.storage.sql.adapter import SqlStorage

IMAGEGEN = shutil.which("imagegen", path=str(Path(sys.executable).parent)) or "imagegen"

GENERATION = {
    "userId": "testUser1",
    "model": "model-a",
    "style": "anime",
    "color": "vibrant",
    "size": "512x512",
    "prompt": "A cat sitting on a futuristic throne",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [IMAGEGEN, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"imagegen {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


class Server:
    """One `imagegen serve` process on a free loopback port, with its own data folder."""

    def __init__(self, data_dir: Path, env: dict[str, str], args: list[str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.args = args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "IMAGEGEN_DATA_DIR": str(self.data_dir), **self.env}
        command = [IMAGEGEN, "serve", "--port", str(self.port), *self.args]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.log.read_text()}")

    def keys(self) -> dict[str, str]:
        lines = (self.data_dir / "initial-keys.txt").read_text().splitlines()
        return dict(line.split()[:2] for line in lines if line and not line.startswith("#"))

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no shutdown code runs
        self.process.wait()


class ServerFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Server] = []

    def start(self, *args: str, data_dir: Path | None = None, **env: str) -> Server:
        defaults = {"AI_FAILURE_RATE": "0", "IMAGEGEN_MODEL_LATENCY_MS": "0"}
        server = Server(data_dir or self.tmp_path / "var", {**defaults, **env}, list(args))
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


async def load_initial_data(storage: Storage) -> bool:
    """The initial data set through the port alone (what `imagegen serve` loads on its first start:
    the catalog, testUser1: 100, testUser2: 10, an admin key and one key per user)."""
    data = INITIAL_DATA
    catalog = Catalog(
        models={m.name: m for m in data.models},
        styles=frozenset(data.styles),
        colors=frozenset(data.colors),
        sizes=dict(data.sizes),
    )
    owners: list[str | None] = [None, *data.users]
    keys = [(new_id(), hashlib.sha256(secrets.token_bytes(32)).hexdigest(), owner) for owner in owners]
    return await storage.load_initial_data(catalog, dict(data.users), keys, utcnow())


async def migrated_sql(url: str, *, migrate: bool = True) -> AsyncIterator[SqlStorage]:
    """A migrated SQL database with the initial data set (testUser1: 100, testUser2: 10), closed after.

    `migrate=False`: the database is a copy of a migrated one already (see tests/conftest.py).
    """
    storage = SqlStorage(url)
    if migrate:
        await storage.migrate()
    await load_initial_data(storage)
    yield storage
    await storage.close()


async def memory_storage() -> AsyncIterator[MemoryStorage]:
    """The in-memory adapter with the initial data set; a test that needs a SQL engine skips."""

    class InMemory(MemoryStorage):
        def __getattr__(self, name: str) -> Any:
            if name == "engine":
                pytest.skip("SQL-only: this test works on storage.engine (SQL), which memory has not")
            raise AttributeError(name)

    storage = InMemory()
    await load_initial_data(storage)
    yield storage
