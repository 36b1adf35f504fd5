"""A server killed mid-job loses nothing: after a restart every request ends, charged or refunded once."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx

from tests.e2e.helpers import assert_verified, credits_of, query_db, request_statuses, wait_for
from tests.support import GENERATION, Server, ServerFactory

COSTS = {"512x512": 1, "1024x1024": 3, "1024x1792": 4}
SIZES = tuple(COSTS)
REQUESTS = 10
SLOW = {
    "IMAGEGEN_MODEL_LATENCY_MS": "3000",
    "IMAGEGEN_JOB_LEASE_SECONDS": "2",
    "IMAGEGEN_RECOVERY_INTERVAL_SECONDS": "0.5",
    "IMAGEGEN_WAIT_TIMEOUT_SECONDS": "0",
}
TERMINAL = {"completed", "failed", "canceled"}


def _start_jobs_and_kill(servers: ServerFactory, **env: str) -> tuple[Server, dict[str, str]]:
    """Creates REQUESTS jobs on a slow server and SIGKILLs it while some run; the statuses at death."""
    server = servers.start(**SLOW, **env)
    with server.client(server.keys()["testUser1"]) as client:
        for n in range(REQUESTS):
            body = {**GENERATION, "size": SIZES[n % len(SIZES)], "prompt": f"crash test {n}"}
            response = client.post("/createGenerationRequest", json=body)
            assert response.status_code == 202, response.text  # it does not wait for the image
            created = response.json()
            assert created["status"] in {"pending", "running"} and created["imageUrl"] is None
            assert created["deductedCredits"] == COSTS[body["size"]]
    wait_for(lambda: "running" in request_statuses(server.data_dir).values(), 10, "a running job")
    server.kill()
    at_death = request_statuses(server.data_dir)
    assert len(at_death) == REQUESTS
    assert "running" in at_death.values()
    return server, at_death


def _restart_and_settle(servers: ServerFactory, data_dir: Path, **env: str) -> tuple[Server, dict[str, str]]:
    restarted = servers.start(data_dir=data_dir, **{**SLOW, "IMAGEGEN_MODEL_LATENCY_MS": "0"}, **env)

    def all_terminal() -> dict[str, str] | None:
        statuses = request_statuses(data_dir)
        return statuses if set(statuses.values()) <= TERMINAL else None

    return restarted, wait_for(all_terminal, 30, "every request to reach a terminal status", 0.2)


def _assert_charged_or_refunded_once(server: Server, final: dict[str, str]) -> None:
    costs = dict(query_db(server.data_dir, "SELECT id, cost FROM generation_requests"))
    with server.client(server.keys()["testUser1"]) as client:
        credits = credits_of(client, "testUser1")
    entries = Counter(
        (t["generationRequestId"], t["type"]) for t in credits["transactions"] if t["generationRequestId"]
    )
    for request_id, status in final.items():
        assert entries[(request_id, "deduction")] == 1, request_id
        assert entries[(request_id, "refund")] == (0 if status == "completed" else 1), (request_id, status)
    spent = sum(costs[request_id] for request_id, status in final.items() if status == "completed")
    assert credits["currentCredits"] == 100 - spent
    assert_verified(server.data_dir)


def test_jobs_running_when_the_server_is_killed_finish_after_a_restart(servers: ServerFactory) -> None:
    killed, at_death = _start_jobs_and_kill(servers)

    restarted, final = _restart_and_settle(servers, killed.data_dir)

    assert set(final) == set(at_death)
    # With retries left and a model that never fails, the lost jobs are simply run again.
    assert set(final.values()) == {"completed"}
    _assert_charged_or_refunded_once(restarted, final)


def test_jobs_killed_on_their_last_attempt_fail_and_are_refunded_exactly_once(
    servers: ServerFactory,
) -> None:
    one_attempt = {"IMAGEGEN_JOB_MAX_ATTEMPTS": "1"}
    killed, at_death = _start_jobs_and_kill(servers, **one_attempt)

    restarted, final = _restart_and_settle(servers, killed.data_dir, **one_attempt)

    running = {request_id for request_id, status in at_death.items() if status == "running"}
    pending = {request_id for request_id, status in at_death.items() if status == "pending"}
    assert {request_id for request_id, status in final.items() if status == "failed"} == running
    assert {request_id for request_id, status in final.items() if status == "completed"} == pending
    errors = dict(query_db(restarted.data_dir, "SELECT id, error FROM generation_requests"))
    assert all("worker lost" in errors[request_id] for request_id in running)
    _assert_charged_or_refunded_once(restarted, final)


def test_a_server_killed_while_it_commits_batches_of_creates_loses_no_acknowledged_create(
    servers: ServerFactory,
) -> None:
    """Group commit answers a create only after its batch has committed: kill the server while 16
    clients keep it batching, and every create a client saw accepted is in the database, debited
    once, while nothing half-written is (the balance is the opening grant minus what is there)."""
    server = servers.start(
        IMAGEGEN_WORKERS="0",
        IMAGEGEN_RATE_PER_USER_PER_SECOND="100000",
        IMAGEGEN_RATE_BURST_PER_USER="100000",
        IMAGEGEN_MAX_IN_FLIGHT_PER_USER="100000",
    )
    admin_key = server.keys()["admin"]
    with server.client(admin_key) as admin:
        assert (
            admin.post("/v1/admin/users", json={"userId": "batched", "credits": 100_000}).status_code == 201
        )
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with server.client(admin_key) as http:
            while not stop.is_set():
                try:
                    response = http.post("/v1/generations", json={**GENERATION, "userId": "batched"})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 202:
                    with lock:
                        accepted.append(response.json()["id"])

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(accepted) >= 300 or None, 30, "300 accepted creates")
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(10)

    stored = {
        row[0]
        for row in query_db(server.data_dir, "SELECT id FROM generation_requests WHERE user_id = 'batched'")
    }
    assert set(accepted) <= stored  # acknowledged means committed
    deducted = query_db(
        server.data_dir,
        "SELECT count(*), -sum(delta) FROM ledger_entries WHERE user_id = 'batched' AND type = 'deduction'",
    )[0]
    balance = query_db(server.data_dir, "SELECT credits FROM users WHERE id = 'batched'")[0][0]
    assert deducted == (len(stored), len(stored))  # one deduction of 1 credit per stored request
    assert balance == 100_000 - len(stored)
    assert_verified(server.data_dir)
