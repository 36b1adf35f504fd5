"""Scale-out on PostgreSQL: 2 API processes and 2 worker processes under load, one worker killed.

Clients hammer the API for 30 s (one hot user, and users who run out of credits) while one worker is
killed with SIGKILL mid-run. Afterwards every accepted request is terminal, refunds happened exactly
once, `imagegen verify` is clean, and a report over the period has the right totals.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.domain.generation import Status
from imagegen.storage.sql.adapter import SqlStorage
from tests.support import IMAGEGEN, free_port, run_cli

LOAD_SECONDS = 30
KILL_AFTER = 10
PACE_SECONDS = 0.5
SIZES = {"512x512": 1, "1024x1024": 3, "1024x1792": 4}
CLUSTER_ENV = {
    "AI_FAILURE_RATE": "0.1",
    "IMAGEGEN_MODEL_LATENCY_MS": "40",
    "IMAGEGEN_JOB_LEASE_SECONDS": "2",
    "IMAGEGEN_RECOVERY_INTERVAL_SECONDS": "0.5",
    "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.2",
    "IMAGEGEN_RATE_PER_USER_PER_SECOND": "10000",
    "IMAGEGEN_RATE_BURST_PER_USER": "10000",
    "IMAGEGEN_MAX_IN_FLIGHT_PER_USER": "10000",
}


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [IMAGEGEN, "serve", *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait_ready(url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"API did not start:\n{log.read_text()}")


class Load:
    """Client threads creating generations until told to stop; records what was accepted."""

    def __init__(self, url: str, keys: dict[str, str], hot: str) -> None:
        self.url = url
        self.keys = keys
        self.hot = hot
        self.accepted: dict[str, str] = {}  # generation id -> user
        self.refused: Counter[int] = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                user = self.hot if rng.random() < 0.5 else rng.choice(list(self.keys))
                body = {
                    "model": rng.choice(["model-a", "model-b"]),
                    "style": "anime",
                    "color": "neon",
                    "size": rng.choice(list(SIZES)),
                    "prompt": f"load {rng.random()}",
                }
                answer = client.post(
                    "/v1/generations", json=body, headers={"Authorization": f"Bearer {self.keys[user]}"}
                )
                with self.lock:
                    if answer.status_code in (200, 202):
                        self.accepted[answer.json()["id"]] = user
                    else:
                        self.refused[answer.status_code] += 1
                # Paced so that two cores (shared with the servers) keep up: drawing PNGs is the bottleneck.
                self.stop.wait(PACE_SECONDS)


@pytest.mark.slow
def test_a_cluster_loses_nothing_when_a_worker_is_killed_under_load(
    postgres_url: str, tmp_path: Path
) -> None:
    env = {**CLUSTER_ENV, "IMAGEGEN_DATABASE_URL": postgres_url, "IMAGEGEN_DATA_DIR": str(tmp_path / "var")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = Process(["--role", "api", "--processes", "2", "--port", str(port)], env, tmp_path / "api.log")
    wait_ready(url, api.log)
    workers = [
        Process(["--role", "worker", "--workers", "4"], env, tmp_path / f"worker{n}.log") for n in range(2)
    ]
    processes = [api, *workers]
    try:
        admin = (tmp_path / "var" / "initial-keys.txt").read_text().split("admin ")[1].split()[0]
        keys = create_users(url, admin, {"hot": 1_000_000, **{f"small{n}": 12 for n in range(12)}})
        started = utcnow()
        load = Load(url, keys, "hot")
        clients = [threading.Thread(target=load.run, args=(n,)) for n in range(8)]
        for client in clients:
            client.start()
        time.sleep(KILL_AFTER)
        workers[0].popen.kill()  # SIGKILL: its running jobs' leases will expire
        time.sleep(LOAD_SECONDS - KILL_AFTER)
        load.stop.set()
        for client in clients:
            client.join()
        ended = utcnow()

        asyncio.run(drain_and_check(postgres_url, load, keys, started, ended))
        run_cli("verify", env=env)
    finally:
        for process in processes:
            process.stop()


def create_users(url: str, admin_key: str, credits: dict[str, int]) -> dict[str, str]:
    keys = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}) as client:
        for user, amount in credits.items():
            answer = client.post("/v1/admin/users", json={"userId": user, "credits": amount})
            assert answer.status_code == 201, answer.text
            keys[user] = answer.json()["apiKey"]
    return keys


async def drain_and_check(
    url: str, load: Load, keys: dict[str, str], started: datetime, ended: datetime
) -> None:
    storage = SqlStorage(url)
    drain_started = time.monotonic()
    await wait_all_terminal(storage, list(load.accepted), timeout=60)
    print(
        f"accepted {len(load.accepted)}, refused {dict(load.refused)}, "
        f"drained in {time.monotonic() - drain_started:.1f} s"
    )
    await check_outcome(storage, load, keys, started, ended)
    await storage.close()


async def wait_all_terminal(storage: SqlStorage, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = [(i, await storage.get_request(i)) for i in ids]
        open_ids = [i for i, request in found if request is None or not request.status.terminal]
        if not open_ids:
            return
        assert time.monotonic() < deadline, f"{len(open_ids)} requests never finished, e.g. {open_ids[:3]}"
        ids = open_ids
        await asyncio.sleep(0.5)


async def check_outcome(
    storage: SqlStorage, load: Load, keys: dict[str, str], started: datetime, ended: datetime
) -> None:
    assert len(load.accepted) > 150, "the load was too light to mean anything"
    assert load.refused[402] > 0, "the small users never ran out of credits"
    assert set(load.refused) <= {402}, f"unexpected refusals: {load.refused}"
    requests = [await storage.get_request(i) for i in load.accepted]
    statuses = Counter(r.status for r in requests if r is not None)
    assert set(statuses) <= {Status.COMPLETED, Status.FAILED}, statuses
    assert statuses[Status.FAILED] > 0  # 10 % simulated failures, plus any retries exhausted
    spent = Counter[str]()
    for request in requests:
        assert request is not None
        if request.status is Status.COMPLETED:
            spent[request.user_id] += request.cost
    for user in keys:
        opening = 1_000_000 if user == "hot" else 12
        assert (await storage.get_user(user)).credits == opening - spent[user]  # type: ignore[union-attr]
    assert await service.verify(storage) == []
    period = reports.between(started - timedelta(seconds=1), ended + timedelta(seconds=1))
    report = await service.run_report(storage, period, utcnow())
    assert report["totalRequests"] == len(load.accepted)
    assert report["completedRequests"] == statuses[Status.COMPLETED]
    assert report["failedRequests"] == statuses[Status.FAILED]
    assert report["totalCreditsSpent"] == sum(spent.values())
