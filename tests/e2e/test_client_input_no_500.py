"""What a client sends never gets a 500, on SQLite and on PostgreSQL, and a refusal writes nothing.

The cases a security review found answering 500 (or answering wrong): numbers past Python's
4,300-digit conversion limit, NUL characters (which PostgreSQL cannot store), a broken URL, loose JSON
types, and an admin body read before its key was checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import fresh_postgres_database
from tests.support import GENERATION, Server, ServerFactory

HUGE = "9" * 5000  # past the 4,300 digits int() converts
V1_BODY = {k: v for k, v in GENERATION.items() if k != "userId"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"no-500-{request.param}"))
    env: dict[str, str] = {}
    database: Iterator[str] | None = None
    if request.param == "postgres":
        database = fresh_postgres_database(request.getfixturevalue("postgres_template"), request.node.nodeid)
        env["IMAGEGEN_DATABASE_URL"] = next(database)
    try:
        yield factory.start(**env)
    finally:
        factory.stop_all()
        if database is not None:
            next(database, None)


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.keys()["admin"]) as client:
        yield client


@pytest.fixture(scope="module")
def user(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.keys()["testUser1"]) as client:
        yield client


def _state(admin: httpx.Client) -> Any:
    ledgers = [
        admin.get(f"/v1/users/{u}/transactions", params={"limit": "200"}).json()
        for u in ("testUser1", "testUser2")
    ]
    balances = [admin.get(f"/v1/users/{u}").json()["credits"] for u in ("testUser1", "testUser2")]
    generations = admin.get("/v1/generations", params={"limit": "200"}).json()["items"]
    return ledgers, balances, [g["id"] for g in generations]


@contextmanager
def refused(admin: httpx.Client) -> Iterator[list[httpx.Response]]:
    """Collects responses; each must be a 4xx with a message, and the database must not have moved."""
    before = _state(admin)
    responses: list[httpx.Response] = []
    yield responses
    for response in responses:
        assert 400 <= response.status_code < 500, (
            f"{response.request.url}: {response.status_code} {response.text}"
        )
        body = response.json()
        assert body.get("error") or body.get("detail"), response.text
        assert "internal" not in response.text.lower()
    assert _state(admin) == before, "a refused request changed the database"


def test_numbers_past_the_conversion_limit_are_refused(admin: httpx.Client, user: httpx.Client) -> None:
    with refused(admin) as responses:
        responses += [
            user.get("/getUserCredits", params={"userId": "testUser1", "limit": HUGE}),
            user.get("/getUserCredits", params={"userId": "testUser1", "cursor": HUGE}),
            user.get("/v1/users/testUser1/transactions", params={"limit": HUGE}),
            user.get("/v1/users/testUser1/transactions", params={"cursor": HUGE}),
            user.get("/v1/generations", params={"limit": HUGE}),
            user.get("/v1/generations", params={"cursor": HUGE}),
            admin.get("/v1/reports", params={"limit": HUGE}),
            admin.get("/v1/reports", params={"cursor": HUGE}),
            user.post("/createGenerationRequest", content=f'{{"userId": "testUser1", "n": {HUGE}}}'),
            user.post("/v1/generations", content=f'{{"model": "model-a", "n": {HUGE}}}'),
            admin.post("/v1/admin/users/testUser1/credits", content=f'{{"amount": {HUGE}, "reason": "x"}}'),
            admin.post("/v1/admin/users", content=f'{{"userId": "big", "credits": {HUGE}}}'),
        ]


def test_a_prefer_wait_past_the_conversion_limit_waits_the_maximum(user: httpx.Client) -> None:
    response = user.post("/v1/generations", json=V1_BODY, headers={"Prefer": f"wait={HUGE}"})
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=60"


def test_nul_characters_are_refused_alike_on_every_backend(admin: httpx.Client, user: httpx.Client) -> None:
    with refused(admin) as responses:
        responses += [
            user.post("/createGenerationRequest", json={**GENERATION, "prompt": "a\x00cat"}),
            user.post("/v1/generations", json={**V1_BODY, "prompt": "a\x00cat"}),
            user.post("/v1/generations", json={**V1_BODY, "style": "anime\x00"}),
            user.post("/v1/generations", json={**V1_BODY, "webhook": "https://example.com/\x00"}),
            admin.post("/v1/admin/users/testUser1/credits", json={"amount": 5, "reason": "promo\x00"}),
            admin.post("/v1/admin/users", json={"userId": "nul\x00user", "credits": 5}),
            user.get("/v1/generations/abc%00def"),
            user.post("/v1/generations/abc%00def/cancel"),
            admin.get("/v1/reports/2026-W47%00"),
            admin.delete("/v1/admin/keys/key%00id"),
            admin.put("/v1/admin/catalog/styles/pixel%00art", json={"enabled": True}),
            admin.put("/v1/admin/models/model%00x", json={"enabled": True}),
            user.get("/getUserCredits", params={"userId": "testUser1\x00"}),
            user.get("/getUserCredits", params={"userId": "testUser1", "cursor": "12\x00"}),
            user.get("/v1/users/testUser1/transactions", params={"cursor": "1\x002"}),
            user.get("/v1/generations", params={"cursor": "MjAyNi0xMS0xNlQwMDowMDowMCswMDowMHxhAGI"}),
            admin.get("/v1/reports", params={"cursor": "MjAyNi0xMS0xNlQwMDowMDowMCswMDowMHxhAGI"}),
            user.get("/v1/generations", params={"status": "pending\x00"}),
        ]


def test_a_webhook_url_that_breaks_the_url_parser_is_a_422(admin: httpx.Client, user: httpx.Client) -> None:
    with refused(admin) as responses:
        responses.append(user.post("/v1/generations", json={**V1_BODY, "webhook": "http://[::1"}))
    assert responses[0].status_code == 422
    assert responses[0].json()["errors"][0]["field"] == "webhook"


LOOSE = [
    ("POST", "/v1/admin/users/testUser1/credits", {"amount": True, "reason": "bool"}),
    ("POST", "/v1/admin/users/testUser1/credits", {"amount": "5", "reason": "string"}),
    ("POST", "/v1/admin/users/testUser1/credits", {"amount": 5.0, "reason": "float"}),
    ("POST", "/v1/admin/users/testUser1/credits", {"amount": 5, "reason": 7}),
    ("POST", "/v1/admin/users", {"userId": "loose", "credits": "5"}),
    ("POST", "/v1/admin/users", {"userId": "loose", "credits": True}),
    ("PUT", "/v1/admin/catalog/styles/anime", {"enabled": 0}),
    ("PUT", "/v1/admin/catalog/sizes/512x512", {"enabled": True, "cost": "2"}),
    ("PUT", "/v1/admin/models/model-a", {"failureRate": "0.5"}),
    ("PUT", "/v1/admin/models/model-a", {"enabled": "false"}),
    ("PUT", "/v1/admin/models/model-a", {"latencyMs": True}),
    ("POST", "/v1/reports", {"start": 0, "end": 1}),
    ("POST", "/v1/reports", {"start": "2026-11-16", "end": "2026-11-23"}),
]


@pytest.mark.parametrize("method, path, body", LOOSE, ids=[f"{m} {p} {b}" for m, p, b in LOOSE])
def test_loose_json_types_are_a_422_not_a_conversion(
    admin: httpx.Client, method: str, path: str, body: Any
) -> None:
    with refused(admin) as responses:
        responses.append(admin.request(method, path, json=body))
    assert responses[0].status_code == 422
    assert responses[0].json()["code"] == "validation_error"


@pytest.mark.parametrize("since", ["0.5", "1700000000", "2026-11-26", "yesterday", "2026-11-26T00:00:00"])
def test_a_time_in_a_query_is_iso_8601_with_a_zone(user: httpx.Client, since: str) -> None:
    response = user.get("/v1/users/testUser1/transactions", params={"since": since})
    assert response.status_code == 422, response.text
    assert "ISO 8601" in response.json()["detail"]
    ok = user.get("/v1/users/testUser1/transactions", params={"since": "2026-11-26T00:00:00+01:00"})
    assert ok.status_code == 200


ADMIN_BODY_ROUTES = [
    ("POST", "/v1/admin/users"),
    ("POST", "/v1/admin/users/testUser1/credits"),
    ("PUT", "/v1/admin/catalog/styles/anime"),
    ("PUT", "/v1/admin/models/model-a"),
    ("POST", "/v1/reports"),
]


@pytest.mark.parametrize("method, path", ADMIN_BODY_ROUTES)
def test_an_admin_route_checks_the_key_before_it_reads_the_body(
    server: Server, method: str, path: str
) -> None:
    malformed: dict[str, Any] = {"content": b'{"userId": ', "headers": {"content-type": "application/json"}}
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.request(method, path, **malformed).status_code == 401
    with server.client(server.keys()["testUser1"]) as user:
        assert user.request(method, path, **malformed).status_code == 403
    with server.client(server.keys()["admin"]) as admin:
        assert admin.request(method, path, **malformed).status_code == 422


def test_a_valid_strict_body_is_still_accepted(admin: httpx.Client) -> None:
    response = admin.post("/v1/admin/users/testUser2/credits", json={"amount": 5, "reason": "strict"})
    assert response.status_code == 201, response.text
    assert json.loads(response.text)["credits"] == 5


@pytest.mark.parametrize(
    "key", ["", "a\tb", b"cl\xe9", "k" * 256], ids=["empty", "a tab", "non-ASCII", "too long"]
)
def test_an_unusable_idempotency_key_is_refused_alike_on_both_create_routes(
    admin: httpx.Client, user: httpx.Client, key: str | bytes
) -> None:
    headers: Any = {"Idempotency-Key": key}
    with refused(admin) as responses:
        for size in ("512x512", "1024x1024"):  # two different bodies: neither may replay the other
            responses.append(
                user.post("/createGenerationRequest", json={**GENERATION, "size": size}, headers=headers)
            )
            responses.append(user.post("/v1/generations", json={**V1_BODY, "size": size}, headers=headers))
        responses.append(
            admin.post(
                "/v1/admin/users/testUser2/credits", json={"amount": 1, "reason": "k"}, headers=headers
            )
        )
    case_study, v1 = responses[0], responses[1]
    assert case_study.status_code == 400 and "Idempotency-Key" in case_study.json()["error"]
    assert v1.status_code == 422 and "Idempotency-Key" in v1.json()["detail"]
