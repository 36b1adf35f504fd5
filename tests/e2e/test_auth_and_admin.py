"""API keys, the admin routes, the open system routes, --no-auth, and the weekly report route."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import credits_of, query_db
from tests.support import GENERATION, IMAGEGEN, Server, ServerFactory, free_port


# -- initial keys ------------------------------------------------------------------------------
def test_the_first_start_writes_an_owner_only_key_file_with_the_admin_and_initial_users(
    server: Server,
) -> None:
    path = server.data_dir / "initial-keys.txt"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys = server.keys()
    assert set(keys) == {"admin", "testUser1", "testUser2"}
    assert len(set(keys.values())) == 3
    assert str(path.resolve()) in server.log.read_text()  # the operator is told where they are


def test_keys_are_stored_hashed_never_in_clear(server: Server) -> None:
    stored = {row[0] for row in query_db(server.data_dir, "SELECT key_hash FROM api_keys")}
    assert len(stored) == 3
    database = (server.data_dir / "imagegen.db").read_bytes()
    for key in server.keys().values():
        assert key not in stored
        assert key.encode() not in database


def test_each_initial_key_acts_on_its_own_user_and_the_admin_key_on_all(server: Server) -> None:
    keys = server.keys()
    for user_id in ("testUser1", "testUser2"):
        with server.client(keys[user_id]) as own, server.client(keys["admin"]) as admin:
            mine = own.get(f"/v1/users/{user_id}")
            assert mine.status_code == 200, mine.text
            assert mine.json() == admin.get(f"/v1/users/{user_id}").json()
    with server.client(keys["testUser2"]) as client:
        assert client.get("/v1/users/testUser1").status_code == 403


# -- admin: users and credits ------------------------------------------------------------------
def test_the_admin_creates_a_user_whose_key_works_for_that_user_only(
    server: Server, admin: httpx.Client
) -> None:
    created = admin.post("/v1/admin/users", json={"userId": "alice", "credits": 5})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["id"], body["credits"]) == ("alice", 5)
    assert created.headers["location"] == "/v1/users/alice"
    with server.client(body["apiKey"]) as alice:
        assert alice.get("/v1/users/alice").json()["credits"] == 5
        assert (
            alice.post("/createGenerationRequest", json={**GENERATION, "userId": "alice"}).status_code == 200
        )
        assert credits_of(alice, "alice")["currentCredits"] == 4
        assert alice.get("/v1/users/testUser1").status_code == 403
        assert alice.get("/getUserCredits", params={"userId": "testUser1"}).status_code == 403
        assert alice.post("/createGenerationRequest", json=GENERATION).status_code == 403
        assert alice.post("/v1/admin/users", json={"userId": "mallory"}).status_code == 403


def test_creating_a_user_that_exists_is_a_409_and_keeps_the_first(admin: httpx.Client) -> None:
    assert admin.post("/v1/admin/users", json={"userId": "bob", "credits": 5}).status_code == 201
    again = admin.post("/v1/admin/users", json={"userId": "bob", "credits": 500})
    assert again.status_code == 409, again.text
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["code"] == "user_exists"
    assert admin.get("/v1/users/bob").json()["credits"] == 5
    initial = admin.post("/v1/admin/users", json={"userId": "testUser1", "credits": 1})
    assert initial.status_code == 409


def test_the_admin_grants_and_adjusts_credits_with_a_reason_in_the_ledger(admin: httpx.Client) -> None:
    assert admin.post("/v1/admin/users", json={"userId": "carol", "credits": 10}).status_code == 201
    grant = admin.post("/v1/admin/users/carol/credits", json={"amount": 15, "reason": "promo"})
    assert grant.status_code == 201, grant.text
    assert grant.json()["type"] == "grant" and grant.json()["balanceAfter"] == 25
    cut = admin.post("/v1/admin/users/carol/credits", json={"amount": -20, "reason": "chargeback"})
    assert cut.status_code == 201, cut.text
    assert cut.json()["type"] == "adjustment" and cut.json()["balanceAfter"] == 5

    credits = credits_of(admin, "carol")
    assert credits["currentCredits"] == 5
    reasons = [(t["type"], t["reason"]) for t in credits["transactions"]]
    assert reasons == [("adjustment", "chargeback"), ("grant", "promo"), ("grant", "opening balance")]


def test_an_adjustment_below_zero_is_a_402_and_writes_nothing(admin: httpx.Client) -> None:
    assert admin.post("/v1/admin/users", json={"userId": "dave", "credits": 10}).status_code == 201
    before = credits_of(admin, "dave")
    refused = admin.post("/v1/admin/users/dave/credits", json={"amount": -11, "reason": "too much"})
    assert refused.status_code == 402, refused.text
    assert refused.json()["code"] == "insufficient_credits"
    assert credits_of(admin, "dave") == before
    assert (
        admin.post("/v1/admin/users/dave/credits", json={"amount": -10, "reason": "all"}).status_code == 201
    )
    assert credits_of(admin, "dave")["currentCredits"] == 0


def test_moving_credits_of_an_unknown_user_is_a_404(admin: httpx.Client) -> None:
    response = admin.post("/v1/admin/users/ghost/credits", json={"amount": 5, "reason": "hello"})
    assert response.status_code == 404
    assert response.json()["code"] == "user_not_found"


def test_a_user_key_cannot_use_up_another_users_rate_limit(servers: ServerFactory) -> None:
    server = servers.start(IMAGEGEN_RATE_BURST_PER_USER="3", IMAGEGEN_RATE_PER_USER_PER_SECOND="0.01")
    keys = server.keys()
    victim = {**GENERATION, "userId": "testUser2"}
    with server.client(keys["testUser1"]) as attacker:
        assert {attacker.post("/createGenerationRequest", json=victim).status_code for _ in range(3)} == {403}
    with server.client(keys["testUser2"]) as client:
        response = client.post("/createGenerationRequest", json=victim)
    assert response.status_code == 200, response.text


# -- open routes and --no-auth -----------------------------------------------------------------
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs"])
def test_system_routes_need_no_key(server: Server, path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 200, response.text


def test_no_auth_refuses_to_bind_to_a_public_address(tmp_path: Path) -> None:
    data_dir = tmp_path / "public"
    command = [IMAGEGEN, "serve", "--no-auth", "--host", "0.0.0.0", "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "--no-auth" in result.stderr and "loopback" in result.stderr
    assert "0.0.0.0" in result.stderr
    assert not (data_dir / "imagegen.db").exists()


def test_no_auth_on_loopback_serves_without_a_key(servers: ServerFactory) -> None:
    server = servers.start("--no-auth")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        created = client.post("/createGenerationRequest", json=GENERATION)
        assert created.status_code == 200, created.text
        assert credits_of(client, "testUser1")["currentCredits"] == 99
        assert client.post("/v1/admin/users", json={"userId": "bob", "credits": 3}).status_code == 201
        assert client.get("/scheduleWeeklyReport").status_code == 200


# -- the weekly report route -------------------------------------------------------------------
REPORT_FIELDS = {
    "totalRequests",
    "completedRequests",
    "failedRequests",
    "totalCreditsSpent",
    "totalCreditsRefunded",
    "successRate",
    "byModel",
    "byStyle",
    "bySize",
    "byColor",
    "uniqueUsers",
    "periodStart",
    "periodEnd",
    "generatedAt",
    "anomalies",
}


def test_the_admin_runs_the_weekly_report_for_the_last_7_days(servers: ServerFactory) -> None:
    server = servers.start()  # its own: the report counts every request of the last 7 days
    with server.client(server.keys()["testUser1"]) as user:
        for size in ("512x512", "1024x1024"):
            assert user.post("/createGenerationRequest", json={**GENERATION, "size": size}).status_code == 200
    with server.client(server.keys()["admin"]) as admin:
        response = admin.post("/demo-case-study/us-central1/scheduleWeeklyReport")
        again = admin.get("/scheduleWeeklyReport")
    assert response.status_code == 200, response.text
    report = response.json()
    assert set(report) >= REPORT_FIELDS
    assert report["id"].startswith("report_")
    assert (report["totalRequests"], report["completedRequests"], report["failedRequests"]) == (2, 2, 0)
    assert report["totalCreditsSpent"] == 4 and report["totalCreditsRefunded"] == 0
    assert report["uniqueUsers"] == 1
    assert report["byModel"]["model-a"]["total"] == 2
    assert again.status_code == 200, again.text
    assert again.json()["totalRequests"] == 2  # the same numbers again, by GET this time


def test_the_weekly_report_for_a_named_iso_week_covers_that_week(admin: httpx.Client) -> None:
    response = admin.get("/scheduleWeeklyReport", params={"week": "2026-W47"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["id"] == "2026-W47"
    assert (report["periodStart"], report["periodEnd"]) == ("2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z")
    assert set(report) >= REPORT_FIELDS


@pytest.mark.parametrize("week", ["2026-47", "2026-W54", "2026-W00", "W47", "last week", "9999-W52"])
def test_a_bad_week_is_a_400_that_names_it(admin: httpx.Client, week: str) -> None:
    response = admin.get("/scheduleWeeklyReport", params={"week": week})
    assert response.status_code == 400, response.text
    assert week in response.json()["error"]


def test_a_user_key_cannot_run_the_weekly_report(server: Server) -> None:
    reports = "SELECT count(*) FROM reports"
    before = query_db(server.data_dir, reports)
    with server.client(server.keys()["testUser1"]) as user:
        response = user.post("/scheduleWeeklyReport", params={"week": "2026-W46"})
    assert response.status_code == 403
    assert query_db(server.data_dir, reports) == before
