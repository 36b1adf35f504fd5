"""Idempotency-Key on /v1 POSTs: a retry replays the first answer and never charges twice.

One server for the module; each test works on its own fresh user so that ledgers never mix.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.e2e.helpers import create_user
from tests.support import Server

BODY = {"model": "model-a", "style": "anime", "color": "vibrant", "size": "1024x1024", "prompt": "a fox"}
_names = itertools.count()


def new_user(server: Server, credits: int = 100, **client: Any) -> tuple[str, httpx.Client]:
    user_id = f"idem{next(_names)}"
    return user_id, server.client(create_user(server, user_id, credits), **client)


def ledger(admin: httpx.Client, user_id: str) -> list[dict[str, Any]]:
    page = admin.get(f"/v1/users/{user_id}/transactions", params={"limit": "200"}).json()
    items: list[dict[str, Any]] = page["items"]
    return items


def generations(admin: httpx.Client, user_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = admin.get("/v1/generations", params={"userId": user_id}).json()["items"]
    return items


def test_a_retry_with_the_same_key_and_body_replays_the_first_answer_and_debits_once(
    server: Server, admin: httpx.Client
) -> None:
    user_id, client = new_user(server)
    with client:
        first = client.post("/v1/generations", json=BODY, headers={"Idempotency-Key": "order-1"})
        retry = client.post("/v1/generations", json=BODY, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.status_code == first.status_code
    assert retry.json() == first.json()
    assert retry.headers["location"] == first.headers["location"]
    assert [g["id"] for g in generations(admin, user_id)] == [first.json()["id"]]
    assert [e["type"] for e in ledger(admin, user_id)] == ["deduction", "grant"]
    assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 97


def test_the_same_key_with_a_different_body_is_a_409_and_debits_nothing(
    server: Server, admin: httpx.Client
) -> None:
    user_id, client = new_user(server)
    with client:
        first = client.post("/v1/generations", json=BODY, headers={"Idempotency-Key": "order-2"})
        other = client.post(
            "/v1/generations", json={**BODY, "prompt": "a wolf"}, headers={"Idempotency-Key": "order-2"}
        )
    assert first.status_code == 202
    assert other.status_code == 409, other.text
    assert other.headers["content-type"].startswith("application/problem+json")
    assert other.json()["code"] == "idempotency_key_reused"
    assert len(generations(admin, user_id)) == 1
    assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 97


def test_16_concurrent_duplicates_make_one_generation_and_one_debit_and_identical_answers(
    server: Server, admin: httpx.Client
) -> None:
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    user_id, client = new_user(server, limits=limits)
    headers = {"Idempotency-Key": "burst-1"}
    with client, ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda _: client.post("/v1/generations", json=BODY, headers=headers), range(16))
        )
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
    assert len({r.text for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert len(generations(admin, user_id)) == 1
    assert [e["type"] for e in ledger(admin, user_id)] == ["deduction", "grant"]
    assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 97


def test_an_admin_credit_grant_retried_with_its_key_grants_once(server: Server, admin: httpx.Client) -> None:
    user_id, _ = new_user(server, credits=0)
    grant = {"amount": 25, "reason": "support ticket 42"}
    headers = {"Idempotency-Key": f"grant-{user_id}"}
    first = admin.post(f"/v1/admin/users/{user_id}/credits", json=grant, headers=headers)
    retry = admin.post(f"/v1/admin/users/{user_id}/credits", json=grant, headers=headers)
    assert first.status_code == 201, first.text
    assert retry.status_code == 201 and retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert [(e["type"], e["credits"], e["reason"]) for e in ledger(admin, user_id)] == [
        ("grant", 25, "support ticket 42")
    ]
    assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 25


def test_8_concurrent_duplicates_of_a_grant_grant_once(server: Server, admin: httpx.Client) -> None:
    user_id, _ = new_user(server, credits=0)
    headers = {"Idempotency-Key": f"grant-{user_id}", "Authorization": admin.headers["authorization"]}
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    path, grant = f"/v1/admin/users/{user_id}/credits", {"amount": 7, "reason": "promo"}
    client = httpx.Client(base_url=server.url, headers=headers, limits=limits, timeout=60)
    with client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.post(path, json=grant), range(8)))
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert [e["type"] for e in ledger(admin, user_id)] == ["grant"]
    assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 7


def test_two_users_with_the_same_key_string_each_get_their_own_generation(
    server: Server, admin: httpx.Client
) -> None:
    first_id, first = new_user(server)
    second_id, second = new_user(server)
    headers = {"Idempotency-Key": "my-first-image"}
    with first, second:
        one = first.post("/v1/generations", json=BODY, headers=headers)
        two = second.post("/v1/generations", json=BODY, headers=headers)
    assert one.status_code == two.status_code == 202
    assert "idempotent-replayed" not in two.headers
    assert one.json()["id"] != two.json()["id"]
    assert (one.json()["userId"], two.json()["userId"]) == (first_id, second_id)
    for user_id in (first_id, second_id):
        assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 97
