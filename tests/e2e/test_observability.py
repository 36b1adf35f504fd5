"""What an operator watches: /metrics summed over every process, request ids, JSON log lines.

Against real `imagegen serve` processes: two API processes answering scrapes in turn must both
report the counts of both; a worker process apart answers its own scrape; every log line of a
request carries its id, and its error body too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import wait_for
from tests.support import GENERATION, IMAGEGEN, Server, ServerFactory, free_port

JSON_LOGS = {"IMAGEGEN_LOG_FORMAT": "json", "IMAGEGEN_ACCESS_LOG": "1"}
TOKEN = "metrics-token-0123456789"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text page (0 when it is absent)."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def scrape(url: str, token: str) -> str:
    # A new connection each time: the kernel hands it to either API process.
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def log_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for line in server.log.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def create(server: Server, key: str, **headers: str) -> httpx.Response:
    with server.client(key) as client:  # a new connection: either process may take it
        return client.post("/v1/generations", json=GENERATION, headers=headers)


def test_two_api_processes_count_together_whichever_answers_the_scrape(
    servers: ServerFactory, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"  # where `serve` makes its processes' shared metrics folder
    temp.mkdir()
    server = servers.start("--processes", "2", TMPDIR=str(temp), IMAGEGEN_METRICS_TOKEN=TOKEN, **JSON_LOGS)
    with server.client(server.keys()["admin"]) as admin:  # credits for however many creates it takes
        grant = admin.post("/v1/admin/users/testUser1/credits", json={"amount": 100_000, "reason": "metered"})
    assert grant.status_code in (200, 201), grant.text
    key = server.keys()["testUser1"]
    made = 0

    def both_processes_created() -> bool:
        nonlocal made
        for _ in range(10):
            assert create(server, key).status_code == 202
            made += 1
        pids = {line["pid"] for line in log_lines(server) if line.get("route") == "/v1/generations"}
        return len(pids) == 2

    wait_for(both_processes_created, 60, "creates answered by both API processes", interval=0)
    wait_for(
        lambda: sample(scrape(server.url, TOKEN), "imagegen_generations_finished_total") == made,
        30,
        "every job's end",
    )

    for _ in range(6):  # each scrape answered by either process: every one sees both's counts
        text = scrape(server.url, TOKEN)
        assert sample(text, "imagegen_http_requests_total", route="/v1/generations", status="202") == made
        assert sample(text, "imagegen_http_request_duration_seconds_count", route="/v1/generations") == made
        assert sample(text, "imagegen_generations_created_total", model="model-a") == made
        assert sample(text, "imagegen_credits_total", movement="debited") == made  # 512x512 costs 1
        assert (
            sample(text, "imagegen_generations_finished_total", model="model-a", status="completed") == made
        )
        assert sample(text, "imagegen_job_duration_seconds_count", model="model-a") == made
        assert sample(text, "imagegen_queue_depth", model="model-a") == 0
        assert "imagegen_queue_oldest_pending_seconds" in text
    assert len(list(temp.glob("imagegen-metrics-*"))) == 1
    server.stop()
    assert list(temp.iterdir()) == []  # removed when `serve` ends


def test_metrics_need_an_admin_key_or_the_metrics_token(servers: ServerFactory) -> None:
    server = servers.start(IMAGEGEN_METRICS_TOKEN=TOKEN, IMAGEGEN_WORKERS="0")
    keys = server.keys()

    def status(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{server.url}/metrics", headers=headers, timeout=30).status_code

    assert status(None) == 401
    assert status("not-the-token-at-all") == 401
    assert status(keys["testUser1"]) == 403
    assert status(keys["admin"]) == 200
    assert status(TOKEN) == 200


def test_a_worker_process_apart_answers_its_own_scrape(servers: ServerFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    api = servers.start("--role", "api", data_dir=data_dir, IMAGEGEN_METRICS_TOKEN=TOKEN)
    port = free_port()
    env = {**os.environ, "IMAGEGEN_DATA_DIR": str(data_dir), "IMAGEGEN_METRICS_PORT": str(port)}
    env.update(IMAGEGEN_METRICS_TOKEN=TOKEN, AI_FAILURE_RATE="0", IMAGEGEN_MODEL_LATENCY_MS="0")
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen([IMAGEGEN, "serve", "--role", "worker"], env=env, stdout=log, stderr=log)
    try:
        _worker_counts_its_jobs(api, f"http://127.0.0.1:{port}")
    finally:
        worker.terminate()
        worker.wait(15)


def _worker_counts_its_jobs(api: Server, worker_url: str) -> None:
    key = api.keys()["testUser1"]
    for _ in range(3):
        assert create(api, key).status_code == 202

    def finished() -> str | None:
        try:
            text = scrape(worker_url, TOKEN)
        except httpx.ConnectError:  # the worker is still starting
            return None
        return text if sample(text, "imagegen_generations_finished_total", status="completed") == 3 else None

    done = wait_for(finished, 30, "the worker's three completions")
    api_text = scrape(api.url, TOKEN)

    assert sample(api_text, "imagegen_generations_created_total", model="model-a") == 3
    assert sample(api_text, "imagegen_generations_finished_total") == 0  # the API ran no job
    assert sample(done, "imagegen_job_duration_seconds_count", model="model-a", outcome="completed") == 3
    assert sample(done, "imagegen_queue_depth", model="model-a") == 0
    assert httpx.get(f"{worker_url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{worker_url}/other", timeout=10).status_code == 404


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.e2e.helpers import started

    yield from started(tmp_path_factory, "json_logs", **JSON_LOGS)


def test_every_log_line_of_a_request_and_its_error_body_carry_its_id(json_server: Server) -> None:
    keys = json_server.keys()
    refused = httpx.post(
        f"{json_server.url}/v1/generations",
        json={**GENERATION, "size": "9x9"},
        headers={"Authorization": f"Bearer {keys['testUser1']}", "X-Request-ID": "client-id.42"},
    )
    case_study = httpx.post(
        f"{json_server.url}/createGenerationRequest",
        json={"userId": "testUser1"},
        headers={"X-Request-ID": "cs-7"},
    )

    assert refused.status_code == 422 and refused.headers["x-request-id"] == "client-id.42"
    assert refused.json()["requestId"] == "client-id.42"
    assert case_study.status_code == 401 and case_study.json()["requestId"] == "cs-7"
    lines = wait_for(
        lambda: [line for line in log_lines(json_server) if line.get("requestId") == "client-id.42"],
        10,
        "the request's log line",
    )
    assert [(line["route"], line["status"]) for line in lines] == [("/v1/generations", 422)]
    assert all(line["logger"] == "imagegen.access" for line in lines)


@pytest.mark.parametrize("given", ["x" * 129, "has space", 'quote"d', "ünïcode", ""])
def test_an_insane_request_id_is_replaced_by_a_new_one(json_server: Server, given: str) -> None:
    response = httpx.get(
        f"{json_server.url}/v1/users/testUser1", headers={"X-Request-ID": given.encode("utf-8")}
    )

    made = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", made) and response.json()["requestId"] == made


def test_each_job_ends_with_one_info_line_with_its_ids_and_duration(json_server: Server) -> None:
    with json_server.client(json_server.keys()["testUser1"]) as client:
        done = client.post("/v1/generations", json=GENERATION, headers={"Prefer": "wait=30"}).json()

    lines = wait_for(
        lambda: [line for line in log_lines(json_server) if line.get("generationId") == done["id"]],
        10,
        "the job's line",
    )
    assert len(lines) == 1
    (line,) = lines
    assert line["level"] == "INFO" and line["outcome"] == "completed" and line["userId"] == "testUser1"
    assert line["model"] == "model-a" and line["durationMs"] >= 0 and line["workerId"]
