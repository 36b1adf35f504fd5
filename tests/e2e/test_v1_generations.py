"""/v1/generations over HTTP: create, wait, get, list, cancel, and every error a client can meet.

Servers are started per configuration (workers on or off, slow models, tight limits) and shared by the
tests that need the same one; each test works on a fresh user so tests never see each other's credits.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import create_user, started
from tests.support import Server, ServerFactory

BODY = {"model": "model-a", "style": "anime", "color": "vibrant", "size": "512x512", "prompt": "a red fox"}
FIELDS = {
    "id",
    "userId",
    "model",
    "style",
    "color",
    "size",
    "prompt",
    "cost",
    "status",
    "imageUrl",
    "error",
    "createdAt",
    "startedAt",
    "completedAt",
}
PROBLEM = "application/problem+json"
_names = itertools.count()


# The module's `server` (tests/e2e/conftest.py): workers on, models instant and never failing.


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No workers, so every generation stays pending; at most 3 in flight per user."""
    yield from started(
        tmp_path_factory, "v1-gen-idle", IMAGEGEN_WORKERS="0", IMAGEGEN_MAX_IN_FLIGHT_PER_USER="3"
    )


def new_user(server: Server, credits: int = 100, **client: Any) -> tuple[str, httpx.Client]:
    """A fresh user with `credits`, and a client that holds the user's key."""
    user_id = f"gen{next(_names)}"
    return user_id, server.client(create_user(server, user_id, credits), **client)


def balance(server: Server, user_id: str) -> int:
    with server.client(server.keys()["admin"]) as admin:
        credits: int = admin.get(f"/v1/users/{user_id}").json()["credits"]
    return credits


def entries(server: Server, user_id: str, **params: str) -> list[dict[str, Any]]:
    with server.client(server.keys()["admin"]) as admin:
        page = admin.get(f"/v1/users/{user_id}/transactions", params={"limit": "200", **params}).json()
    assert page["nextCursor"] is None
    items: list[dict[str, Any]] = page["items"]
    return items


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] and body["title"] and body["detail"]
    return body


# -- create, wait, get --------------------------------------------------------------------------
def test_a_create_answers_202_with_its_location_and_the_whole_pending_resource(server: Server) -> None:
    user_id, client = new_user(server)
    with client:
        response = client.post("/v1/generations", json=BODY)
        assert response.status_code == 202, response.text
        body = response.json()
        assert set(body) >= FIELDS
        assert response.headers["location"] == f"/v1/generations/{body['id']}"
        assert body["userId"] == user_id
        assert {k: body[k] for k in BODY} == BODY
        assert body["cost"] == 1
        assert body["status"] in ("pending", "running", "completed")
        assert body["createdAt"].endswith("Z")
        assert client.get(response.headers["location"]).json()["id"] == body["id"]
    assert balance(server, user_id) == 99


def test_prefer_wait_answers_200_with_the_completed_resource_and_an_image_that_serves_a_png(
    server: Server,
) -> None:
    user_id, client = new_user(server)
    with client:
        response = client.post("/v1/generations", json=BODY, headers={"Prefer": "wait=10"})
        assert response.status_code == 200, response.text
        assert response.headers["preference-applied"] == "wait=10"
        body = response.json()
        assert body["status"] == "completed" and body["error"] is None
        assert body["startedAt"] and body["completedAt"]
        image = client.get(body["imageUrl"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_prefer_wait_beyond_60_seconds_is_capped_at_60(server: Server) -> None:
    _, client = new_user(server)
    with client:
        response = client.post("/v1/generations", json=BODY, headers={"Prefer": "respond-async, wait=600"})
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=60"


def test_prefer_wait_answers_202_with_the_unfinished_resource_when_the_model_is_slower(
    servers: ServerFactory,
) -> None:
    server = servers.start(IMAGEGEN_MODEL_LATENCY_MS="3000")
    with server.client(server.keys()["testUser1"]) as client:
        started = time.monotonic()
        response = client.post("/v1/generations", json=BODY, headers={"Prefer": "wait=1"})
        waited = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("pending", "running")
    assert 0.9 <= waited < 2.5


def test_a_user_gets_its_own_generation_and_a_403_for_another_users(server: Server) -> None:
    _, owner = new_user(server)
    _, other = new_user(server)
    with owner, other:
        created = owner.post("/v1/generations", json=BODY).json()
        mine = owner.get(f"/v1/generations/{created['id']}")
        theirs = other.get(f"/v1/generations/{created['id']}")
    assert mine.status_code == 200 and mine.json()["id"] == created["id"]
    assert_problem(theirs, 403, "forbidden")


def test_an_unknown_generation_is_a_404_problem(server: Server) -> None:
    with server.client(server.keys()["testUser1"]) as client:
        response = client.get("/v1/generations/no-such-generation")
    assert_problem(response, 404, "generation_not_found")


# -- listing ------------------------------------------------------------------------------------
def test_a_user_lists_its_generations_newest_first_in_cursor_pages_and_by_status(
    idle_server: Server,
) -> None:
    _, client = new_user(idle_server)
    _, other = new_user(idle_server)
    with client, other:
        other.post("/v1/generations", json=BODY)  # never listed for `client`
        ids = [client.post("/v1/generations", json=BODY).json()["id"] for _ in range(3)]
        for canceled in ids[:2]:
            assert client.post(f"/v1/generations/{canceled}/cancel").status_code == 200
        ids += [client.post("/v1/generations", json=BODY).json()["id"] for _ in range(2)]

        pages, cursor = [], None
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/generations", params=params).json()
            pages.append([item["id"] for item in page["items"]])
            cursor = page["nextCursor"]
            if cursor is None:
                break
        pending = client.get("/v1/generations", params={"status": "pending"}).json()["items"]
        canceled = client.get("/v1/generations", params={"status": "canceled"}).json()["items"]

    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == ids[::-1]
    assert [g["id"] for g in pending] == [ids[4], ids[3], ids[2]]
    assert [g["id"] for g in canceled] == [ids[1], ids[0]]


def test_the_next_cursor_works_when_a_client_pastes_it_into_the_url_as_it_is(idle_server: Server) -> None:
    _, client = new_user(idle_server)
    with client:
        for _ in range(2):
            client.post("/v1/generations", json=BODY)
        cursor = client.get("/v1/generations", params={"limit": "1"}).json()["nextCursor"]
        response = client.get(f"/v1/generations?limit=1&cursor={cursor}")
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 1


def test_an_admin_without_user_id_lists_every_users_generations(idle_server: Server) -> None:
    first, one = new_user(idle_server)
    second, two = new_user(idle_server)
    with one, two:
        a = one.post("/v1/generations", json=BODY).json()["id"]
        b = two.post("/v1/generations", json=BODY).json()["id"]
    with idle_server.client(idle_server.keys()["admin"]) as admin:
        listed = admin.get("/v1/generations", params={"limit": "200"}).json()["items"]
        only_second = admin.get("/v1/generations", params={"userId": second}).json()["items"]
    assert [g["id"] for g in listed if g["id"] in (a, b)] == [b, a]
    assert {g["userId"] for g in listed} >= {first, second}
    assert [g["id"] for g in only_second] == [b]


def test_a_user_key_listing_another_users_generations_is_a_403(server: Server) -> None:
    other_id, _ = new_user(server)
    with server.client(server.keys()["testUser1"]) as client:
        response = client.get("/v1/generations", params={"userId": other_id})
    assert_problem(response, 403, "forbidden")


def test_listing_with_an_unknown_status_is_a_422_naming_the_valid_ones(server: Server) -> None:
    with server.client(server.keys()["testUser1"]) as client:
        response = client.get("/v1/generations", params={"status": "done"})
    body = assert_problem(response, 422, "validation_error")
    assert "pending, running, completed, failed, canceled" in body["detail"]


# -- cancel -------------------------------------------------------------------------------------
def test_canceling_a_pending_generation_refunds_it_once_and_a_second_cancel_is_a_409(
    idle_server: Server,
) -> None:
    user_id, client = new_user(idle_server, credits=10)
    with client:
        created = client.post("/v1/generations", json={**BODY, "size": "1024x1024"}).json()
        assert balance(idle_server, user_id) == 7
        canceled = client.post(f"/v1/generations/{created['id']}/cancel")
        again = client.post(f"/v1/generations/{created['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["completedAt"] is not None
    assert balance(idle_server, user_id) == 10
    refunds = entries(idle_server, user_id, type="refund")
    assert [(r["generationRequestId"], r["credits"], r["balanceAfter"]) for r in refunds] == [
        (created["id"], 3, 10)
    ]
    body = assert_problem(again, 409, "invalid_state")
    assert body["currentStatus"] == "canceled"
    assert len(entries(idle_server, user_id, type="refund")) == 1


def test_canceling_a_completed_generation_is_a_409_and_refunds_nothing(server: Server) -> None:
    user_id, client = new_user(server, credits=10)
    with client:
        created = client.post("/v1/generations", json=BODY, headers={"Prefer": "wait=10"}).json()
        assert created["status"] == "completed"
        response = client.post(f"/v1/generations/{created['id']}/cancel")
    assert_problem(response, 409, "invalid_state")
    assert balance(server, user_id) == 9
    assert entries(server, user_id, type="refund") == []


def test_canceling_another_users_generation_is_a_403_and_changes_nothing(idle_server: Server) -> None:
    owner_id, owner = new_user(idle_server, credits=5)
    _, other = new_user(idle_server)
    with owner, other:
        created = owner.post("/v1/generations", json=BODY).json()
        response = other.post(f"/v1/generations/{created['id']}/cancel")
        assert owner.get(f"/v1/generations/{created['id']}").json()["status"] == "pending"
    assert_problem(response, 403, "forbidden")
    assert balance(idle_server, owner_id) == 4


# -- refused creates ----------------------------------------------------------------------------
def test_a_create_beyond_the_balance_is_a_402_problem_and_writes_nothing(server: Server) -> None:
    user_id, client = new_user(server, credits=3)
    with client:
        response = client.post("/v1/generations", json={**BODY, "size": "1024x1792"})
        listed = client.get("/v1/generations").json()["items"]
    body = assert_problem(response, 402, "insufficient_credits")
    assert body["required"] == 4
    assert listed == []
    assert balance(server, user_id) == 3
    assert [e["type"] for e in entries(server, user_id)] == ["grant"]


def test_invalid_fields_are_a_422_listing_each_bad_field_with_its_allowed_values(server: Server) -> None:
    bad = {"model": "dall-e", "style": "pixel", "color": "plaid", "size": "7x7"}
    user_id, client = new_user(server, credits=5)
    with client:
        response = client.post("/v1/generations", json={**BODY, **bad})
    body = assert_problem(response, 422, "validation_error")
    errors = {e["field"]: e for e in body["errors"]}
    assert set(errors) == set(bad)
    assert errors["model"]["allowed"] == ["model-a", "model-b"]
    assert "anime" in errors["style"]["allowed"]
    assert "vibrant" in errors["color"]["allowed"]
    assert errors["size"]["allowed"] == ["512x512", "1024x1024", "1024x1792"]
    for field, value in bad.items():
        assert value in errors[field]["message"]
    assert balance(server, user_id) == 5


def test_a_body_with_missing_and_invalid_fields_lists_every_bad_field_with_allowed_values(
    server: Server,
) -> None:
    with server.client(server.keys()["testUser1"]) as client:
        response = client.post("/v1/generations", json={"model": "dall-e", "style": "anime"})
    body = assert_problem(response, 422, "validation_error")
    errors = {e["field"]: e for e in body["errors"]}
    assert set(errors) == {"model", "color", "size"}
    assert all(errors[field].get("allowed") for field in errors)


def test_the_create_beyond_the_in_flight_limit_is_a_429_with_retry_after_and_debits_nothing(
    idle_server: Server,
) -> None:
    user_id, client = new_user(idle_server, credits=10)
    with client:
        accepted = [client.post("/v1/generations", json=BODY).status_code for _ in range(3)]
        refused = client.post("/v1/generations", json=BODY)
        listed = client.get("/v1/generations").json()["items"]
    assert accepted == [202, 202, 202]
    body = assert_problem(refused, 429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert body["limit"] == 3
    assert len(listed) == 3
    assert balance(idle_server, user_id) == 7
    assert [e["type"] for e in entries(idle_server, user_id)].count("deduction") == 3


def test_a_create_refused_with_429_runs_when_retried_with_its_key_once_there_is_room(
    idle_server: Server,
) -> None:
    user_id, client = new_user(idle_server, credits=10)
    retry = {"Idempotency-Key": f"{user_id}-fourth"}
    with client:
        ids = [client.post("/v1/generations", json=BODY).json()["id"] for _ in range(3)]
        refused = client.post("/v1/generations", json=BODY, headers=retry)
        client.post(f"/v1/generations/{ids[0]}/cancel")
        accepted = client.post("/v1/generations", json=BODY, headers=retry)
    assert refused.status_code == 429
    assert accepted.status_code == 202, accepted.text
    assert "idempotent-replayed" not in accepted.headers
    assert balance(idle_server, user_id) == 10 - 3


def test_the_create_beyond_the_rate_burst_is_a_429_with_retry_after_and_debits_nothing(
    servers: ServerFactory,
) -> None:
    server = servers.start(
        IMAGEGEN_WORKERS="0",
        IMAGEGEN_RATE_BURST_PER_USER="5",
        IMAGEGEN_RATE_PER_USER_PER_SECOND="0.01",
    )
    user_id, client = new_user(server, credits=10)
    with client:
        accepted = [client.post("/v1/generations", json=BODY).status_code for _ in range(5)]
        refused = client.post("/v1/generations", json=BODY)
    assert accepted == [202] * 5
    assert_problem(refused, 429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert balance(server, user_id) == 5


def test_64_concurrent_creates_for_one_user_are_all_accepted_with_the_default_limits(
    server: Server,
) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    user_id, client = new_user(server, credits=64, limits=limits)
    with client, ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/generations", json=BODY), range(64)))
    assert [r.status_code for r in responses] == [202] * 64, {r.status_code: r.text for r in responses}
    assert len({r.json()["id"] for r in responses}) == 64
    assert balance(server, user_id) == 0
