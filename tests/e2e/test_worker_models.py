"""Worker processes beside an API process, on one database: `serve --role worker --models` claims
only those models' jobs (the others wait, visible in /v1/admin/queues, until a worker serves
them), and a job canceled through the API while another process runs it is refunded once and
its worker lets go of it within about a second. `imagegen verify` is clean after each."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import create_user, verify
from tests.support import GENERATION, IMAGEGEN, Server, ServerFactory

QUIET = {"AI_FAILURE_RATE": "0", "IMAGEGEN_MODEL_LATENCY_MS": "0", "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.2"}


class Workers:
    """`imagegen serve --role worker` processes on a data folder, stopped with SIGTERM after the test."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *args: str, **env: str) -> None:
        log = self.data_dir / f"worker-{len(self.started)}.log"
        environ = {**os.environ, **QUIET, "IMAGEGEN_DATA_DIR": str(self.data_dir), **env}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [IMAGEGEN, "serve", "--role", "worker", *args], env=environ, stdout=out, stderr=out
            )
        self.started.append((process, log))
        wait_for(lambda: "process running" in log.read_text(), f"the worker did not start: {log}")

    def stop_all(self) -> None:
        for process, log in self.started:
            process.send_signal(signal.SIGTERM)
            try:
                assert process.wait(20) == 0, log.read_text()
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail(f"a worker ignored SIGTERM:\n{log.read_text()}")


def wait_for(condition: Callable[[], object], message: str, seconds: float = 30) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, message
        time.sleep(0.05)


@pytest.fixture
def api(servers: ServerFactory) -> Server:
    return servers.start(IMAGEGEN_ROLE="api", **QUIET)


@pytest.fixture
def workers(api: Server) -> Iterator[Workers]:
    started = Workers(api.data_dir)
    yield started
    started.stop_all()


def status(client: httpx.Client, request_id: str) -> str:
    answer = client.get(f"/v1/generations/{request_id}")
    assert answer.status_code == 200, answer.text
    value: str = answer.json()["status"]
    return value


def create(client: httpx.Client, user_id: str, model: str) -> str:
    answer = client.post("/v1/generations", json={**GENERATION, "userId": user_id, "model": model})
    assert answer.status_code == 202, answer.text
    request_id: str = answer.json()["id"]
    return request_id


def queues(admin: httpx.Client) -> dict[str, dict[str, Any]]:
    answer = admin.get("/v1/admin/queues")
    assert answer.status_code == 200, answer.text
    return {q["model"]: q for q in answer.json()["queues"]}


def test_workers_claim_only_their_models_and_the_rest_wait_in_the_queue(
    api: Server, workers: Workers
) -> None:
    key = create_user(api, "split-user", 50)
    with api.client(key) as user, api.client(api.keys()["admin"]) as admin:
        workers.start("--models", "model-a")
        a_jobs = [create(user, "split-user", "model-a") for _ in range(3)]
        b_jobs = [create(user, "split-user", "model-b") for _ in range(2)]

        wait_for(lambda: all(status(user, j) == "completed" for j in a_jobs), "model-a jobs never completed")
        time.sleep(0.5)  # a few more polls of the model-a worker: it still leaves model-b alone
        assert [status(user, j) for j in b_jobs] == ["pending", "pending"]
        assert (queues(admin)["model-b"]["pending"], queues(admin)["model-a"]["pending"]) == (2, 0)

        workers.start("--models", "model-b")
        wait_for(lambda: all(status(user, j) == "completed" for j in b_jobs), "model-b jobs never completed")
        assert user.get("/v1/users/split-user").json()["credits"] == 50 - 5
        assert queues(admin)["model-b"]["pending"] == 0
    workers.stop_all()
    workers.started.clear()
    assert verify(api.data_dir).returncode == 0


def test_a_job_canceled_while_another_process_runs_it_is_refunded_once_and_let_go(
    api: Server, workers: Workers
) -> None:
    key = create_user(api, "cancel-user", 10)
    workers.start(IMAGEGEN_WORKERS="1", IMAGEGEN_MODEL_LATENCY_MS="20000")
    with api.client(key) as user:
        first = create(user, "cancel-user", "model-a")
        wait_for(lambda: status(user, first) == "running", "the worker never took the job")
        second = create(user, "cancel-user", "model-a")

        canceled = user.post(f"/v1/generations/{first}/cancel")

        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        assert user.post(f"/v1/generations/{first}/cancel").status_code == 409  # once: then it has ended
        # The worker (one job at a time, 20 s each) noticed and took the next job at once.
        wait_for(lambda: status(user, second) == "running", "the worker kept the canceled job", seconds=5)
        assert user.post(f"/v1/generations/{second}/cancel").status_code == 200
        assert user.get("/v1/users/cancel-user").json()["credits"] == 10
        entries = user.get("/v1/users/cancel-user/transactions").json()["items"]
        assert sorted(e["type"] for e in entries if e["generationRequestId"] == first) == [
            "deduction",
            "refund",
        ]
    workers.stop_all()
    workers.started.clear()
    assert verify(api.data_dir).returncode == 0


def test_a_generation_resource_shows_its_progress(api: Server, workers: Workers) -> None:
    key = create_user(api, "progress-user", 5)
    workers.start()
    with api.client(key) as user:
        request_id = create(user, "progress-user", "model-a")
        wait_for(lambda: status(user, request_id) == "completed", "the job never completed")
        body = user.get(f"/v1/generations/{request_id}").json()
        listed = user.get("/v1/generations", params={"userId": "progress-user"}).json()["items"]
    assert body["progress"] == 1.0 and listed[0]["progress"] == 1.0
