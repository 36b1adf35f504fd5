"""/v1/users (balance, totals, ledger pages), /v1/catalog, the admin routes, and /openapi.json.

Catalog edits are changes a running server must pick up for the next request, without a restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import create_user
from tests.support import Server, ServerFactory

BODY = {"model": "model-a", "style": "anime", "color": "vibrant", "size": "512x512", "prompt": "a heron"}
_names = itertools.count()


@pytest.fixture(scope="module")
def catalog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose models follow the catalog alone.

    ServerFactory always sets AI_FAILURE_RATE=0 and IMAGEGEN_MODEL_LATENCY_MS=0, which override every
    model's catalog settings, and an empty AI_FAILURE_RATE fails the settings' validation; so this
    server is built from `Server` itself, with both variables left out of its environment.
    """
    server = Server(tmp_path_factory.mktemp("v1-catalog") / "var", {}, [])
    with pytest.MonkeyPatch.context() as env:
        for name in ("AI_FAILURE_RATE", "IMAGEGEN_AI_FAILURE_RATE", "IMAGEGEN_MODEL_LATENCY_MS"):
            env.delenv(name, raising=False)
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
    try:
        yield server
    finally:
        server.stop()


def new_user(server: Server, credits: int = 100) -> tuple[str, httpx.Client]:
    user_id = f"u{next(_names)}"
    return user_id, server.client(create_user(server, user_id, credits))


def move(admin: httpx.Client, user_id: str, amount: int, reason: str) -> dict[str, Any]:
    response = admin.post(f"/v1/admin/users/{user_id}/credits", json={"amount": amount, "reason": reason})
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry


def all_pages(client: httpx.Client, path: str, **params: str) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        page = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        pages.append(page.json()["items"])
        cursor = page.json()["nextCursor"]
        if cursor is None:
            return pages


def signed(entry: dict[str, Any]) -> int:
    credits: int = entry["credits"]
    return -credits if entry["type"] == "deduction" else credits


# -- users and the ledger -----------------------------------------------------------------------
def test_a_user_reads_its_balance_and_lifetime_totals(server: Server, admin: httpx.Client) -> None:
    user_id, client = new_user(server, credits=20)
    move(admin, user_id, 5, "welcome bonus")
    move(admin, user_id, -2, "chargeback")
    with client:
        assert client.post("/v1/generations", json=BODY, headers={"Prefer": "wait=10"}).status_code == 200
        response = client.get(f"/v1/users/{user_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"id", "credits", "createdAt", "totals"}
    assert (body["id"], body["credits"]) == (user_id, 22)
    assert body["createdAt"].endswith("Z")
    assert body["totals"] == {"granted": 25, "deducted": 1, "refunded": 0, "adjusted": -2}


def test_an_unknown_user_is_a_404_for_the_admin_and_a_403_for_a_user_key(
    server: Server, admin: httpx.Client
) -> None:
    with server.client(server.keys()["testUser1"]) as client:
        mine = client.get("/v1/users/nobody-here")
    missing = admin.get("/v1/users/nobody-here")
    assert (missing.status_code, missing.json()["code"]) == (404, "user_not_found")
    assert (mine.status_code, mine.json()["code"]) == (403, "forbidden")


def test_the_ledger_comes_in_cursor_pages_newest_first_each_entry_with_its_balance_after(
    server: Server, admin: httpx.Client
) -> None:
    user_id, client = new_user(server, credits=10)
    for amount in (3, -1, 4):
        move(admin, user_id, amount, f"move {amount}")
    with client:
        client.post("/v1/generations", json=BODY, headers={"Prefer": "wait=10"})
        pages = all_pages(client, f"/v1/users/{user_id}/transactions", limit="2")
    assert [len(page) for page in pages] == [2, 2, 1]
    entries = [entry for page in pages for entry in page]
    assert len({e["id"] for e in entries}) == 5
    assert [(e["type"], e["credits"]) for e in entries] == [
        ("deduction", 1),
        ("grant", 4),
        ("adjustment", -1),
        ("grant", 3),
        ("grant", 10),
    ]
    assert set(entries[0]) >= {"id", "type", "credits", "generationRequestId", "reason", "balanceAfter"}
    assert entries[0]["generationRequestId"] and entries[1]["reason"] == "move 4"
    assert entries[0]["balanceAfter"] == 15
    for newer, older in itertools.pairwise(entries):
        assert newer["balanceAfter"] == older["balanceAfter"] + signed(newer)
    assert entries[-1]["balanceAfter"] == 10
    assert [e["timestamp"] for e in entries] == sorted((e["timestamp"] for e in entries), reverse=True)


def test_the_ledger_filters_by_type_and_by_a_time_range(server: Server, admin: httpx.Client) -> None:
    user_id, _ = new_user(server, credits=10)
    moves = [move(admin, user_id, amount, "filter") for amount in (1, -2, 3, 4)]
    path = f"/v1/users/{user_id}/transactions"

    def ids(**params: Any) -> list[str]:
        response = admin.get(path, params=params)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["items"]]

    grants = ids(type="grant")
    assert len(grants) == 4 and moves[1]["id"] not in grants
    assert ids(type="adjustment") == [moves[1]["id"]]
    assert set(ids(type=["adjustment", "grant"])) == set(ids(type="adjustment,grant")) == set(ids())
    since, until = moves[1]["timestamp"], moves[3]["timestamp"]
    assert ids(since=since) == [moves[3]["id"], moves[2]["id"], moves[1]["id"]]
    assert ids(until=until) == [moves[2]["id"], moves[1]["id"], moves[0]["id"], ids()[-1]]
    assert ids(since=since, until=until, type="grant") == [moves[2]["id"]]


@pytest.mark.parametrize(
    "params",
    [{"type": "bonus"}, {"type": "grant,gift"}, {"since": "2026-01-01T00:00:00"}, {"until": "yesterday"}],
    ids=["unknown type", "one unknown type of two", "a time without a zone", "not a time"],
)
def test_a_bad_ledger_filter_is_a_422_problem(admin: httpx.Client, params: dict[str, str]) -> None:
    response = admin.get("/v1/users/testUser1/transactions", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    if "type" in params:
        assert "deduction, refund, grant, adjustment" in response.json()["detail"]


# -- catalog ------------------------------------------------------------------------------------
def test_the_catalog_lists_the_models_styles_colors_and_sizes_with_their_cost(server: Server) -> None:
    with server.client(server.keys()["testUser2"]) as client:
        response = client.get("/v1/catalog")
    assert response.status_code == 200, response.text
    catalog = response.json()
    assert {"model-a", "model-b"} <= {m["name"] for m in catalog["models"]}
    assert {"realistic", "anime", "oil painting", "sketch", "cyberpunk", "watercolor"} <= set(
        catalog["styles"]
    )
    assert {"vibrant", "monochrome", "pastel", "neon", "vintage"} <= set(catalog["colors"])
    sizes = {s["name"]: s["cost"] for s in catalog["sizes"]}
    assert {k: sizes[k] for k in ("512x512", "1024x1024", "1024x1792")} == {
        "512x512": 1,
        "1024x1024": 3,
        "1024x1792": 4,
    }


def test_a_new_size_and_a_new_price_apply_to_the_next_create_without_a_restart(
    server: Server, admin: httpx.Client
) -> None:
    user_id, client = new_user(server, credits=30)
    added = admin.put("/v1/admin/catalog/sizes/2048x2048", json={"cost": 8})
    assert added.status_code == 200, added.text
    assert {"name": "2048x2048", "cost": 8} in added.json()["sizes"]
    with client:
        first = client.post("/v1/generations", json={**BODY, "size": "2048x2048"})
        assert admin.put("/v1/admin/catalog/sizes/2048x2048", json={"cost": 9}).status_code == 200
        second = client.post("/v1/generations", json={**BODY, "size": "2048x2048"})
        listed = {s["name"]: s["cost"] for s in client.get("/v1/catalog").json()["sizes"]}
    assert first.status_code == 202, first.text
    assert (first.status_code, first.json()["cost"]) == (202, 8)
    assert (second.status_code, second.json()["cost"]) == (202, 9)
    assert listed["2048x2048"] == 9
    assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 30 - 8 - 9


def test_a_disabled_style_is_refused_with_a_422_and_leaves_the_catalog(
    server: Server, admin: httpx.Client
) -> None:
    user_id, client = new_user(server, credits=10)
    assert admin.put("/v1/admin/catalog/styles/pixel art", json={}).status_code == 200
    with client:
        before = client.post("/v1/generations", json={**BODY, "style": "pixel art"})
        disabled = admin.put("/v1/admin/catalog/styles/pixel art", json={"enabled": False})
        after = client.post("/v1/generations", json={**BODY, "style": "pixel art"})
        styles = client.get("/v1/catalog").json()["styles"]
    assert before.status_code == 202, before.text
    assert disabled.status_code == 200 and "pixel art" not in disabled.json()["styles"]
    assert after.status_code == 422, after.text
    [error] = after.json()["errors"]
    assert error["field"] == "style" and "pixel art" not in error["allowed"] and "anime" in error["allowed"]
    assert "pixel art" not in styles
    assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 9


def test_a_model_set_to_always_fail_fails_the_next_generation_and_refunds_it(
    catalog_server: Server,
) -> None:
    user_id, client = new_user(catalog_server, credits=10)
    with catalog_server.client(catalog_server.keys()["admin"]) as admin, client:
        changed = admin.put("/v1/admin/models/model-a", json={"failureRate": 1.0})
        failed = client.post("/v1/generations", json=BODY, headers={"Prefer": "wait=10"})
        refunds = client.get(f"/v1/users/{user_id}/transactions", params={"type": "refund"}).json()["items"]
        credits = client.get(f"/v1/users/{user_id}").json()["credits"]
        catalog = client.get("/v1/catalog").json()
    assert changed.status_code == 200, changed.text
    assert changed.json()["failureRate"] == 1.0
    assert {"name": "model-a", "failureRate": 1.0} in [
        {k: m[k] for k in ("name", "failureRate")} for m in catalog["models"]
    ]
    assert failed.status_code == 200, failed.text
    assert failed.json()["status"] == "failed" and failed.json()["error"]
    assert failed.json()["imageUrl"] is None
    assert [(r["generationRequestId"], r["credits"]) for r in refunds] == [(failed.json()["id"], 1)]
    assert credits == 10


def test_a_models_latency_applies_to_the_next_generation_without_a_restart(catalog_server: Server) -> None:
    _, client = new_user(catalog_server, credits=10)
    with catalog_server.client(catalog_server.keys()["admin"]) as admin, client:
        admin.put("/v1/admin/models/model-b", json={"failureRate": 0.0, "latencyMs": 2000})
        slow = client.post("/v1/generations", json={**BODY, "model": "model-b"}, headers={"Prefer": "wait=1"})
        admin.put("/v1/admin/models/model-b", json={"latencyMs": 0})
        fast = client.post("/v1/generations", json={**BODY, "model": "model-b"}, headers={"Prefer": "wait=5"})
    assert slow.status_code == 202 and slow.json()["status"] in ("pending", "running")
    assert fast.status_code == 200 and fast.json()["status"] == "completed"


def test_a_disabled_model_leaves_the_catalog_and_is_refused(catalog_server: Server) -> None:
    with catalog_server.client(catalog_server.keys()["admin"]) as admin:
        assert admin.put("/v1/admin/models/model-c", json={"failureRate": 0.0}).status_code == 200
        assert "model-c" in [m["name"] for m in admin.get("/v1/catalog").json()["models"]]
        admin.put("/v1/admin/models/model-c", json={"enabled": False})
        models = [m["name"] for m in admin.get("/v1/catalog").json()["models"]]
        refused = admin.post("/v1/generations", json={**BODY, "userId": "testUser1", "model": "model-c"})
    assert "model-c" not in models
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "model"


# -- admin: keys and permissions ------------------------------------------------------------------
ADMIN_ROUTES = [
    ("POST", "/v1/admin/users", {"userId": "intruder", "credits": 1000}),
    ("POST", "/v1/admin/users/testUser1/credits", {"amount": 1000, "reason": "free money"}),
    ("POST", "/v1/admin/users/testUser1/keys", None),
    ("DELETE", "/v1/admin/keys/some-key-id", None),
    ("PUT", "/v1/admin/catalog/sizes/512x512", {"cost": 0}),
    ("PUT", "/v1/admin/catalog/styles/anime", {"enabled": False}),
    ("PUT", "/v1/admin/models/model-a", {"failureRate": 1.0}),
    ("GET", "/v1/admin/webhooks/secret", None),
]


@pytest.mark.parametrize("method, path, body", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_a_user_key_on_any_admin_route_is_a_403_problem(
    server: Server, method: str, path: str, body: Any
) -> None:
    with server.client(server.keys()["testUser1"]) as client:
        response = client.request(method, path, json=body)
        catalog = client.get("/v1/catalog").json()
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "forbidden"
    assert "anime" in catalog["styles"]
    assert {"name": "512x512", "cost": 1} in catalog["sizes"]


def test_an_issued_key_works_until_it_is_revoked_and_then_is_a_401(
    server: Server, admin: httpx.Client
) -> None:
    user_id, first = new_user(server)
    issued = admin.post(f"/v1/admin/users/{user_id}/keys")
    assert issued.status_code == 201, issued.text
    key_id, key = issued.json()["keyId"], issued.json()["apiKey"]
    with server.client(key) as second, first:
        assert second.get(f"/v1/users/{user_id}").status_code == 200
        revoked = admin.delete(f"/v1/admin/keys/{key_id}")
        after = second.get(f"/v1/users/{user_id}")
        untouched = first.get(f"/v1/users/{user_id}")
    assert revoked.status_code == 204
    assert after.status_code == 401 and after.json()["code"] == "unauthenticated"
    assert untouched.status_code == 200
    again = admin.delete(f"/v1/admin/keys/{key_id}")
    assert (again.status_code, again.json()["code"]) == (404, "not_found")


def test_issuing_a_key_for_an_unknown_user_is_a_404(admin: httpx.Client) -> None:
    response = admin.post("/v1/admin/users/nobody-here/keys")
    assert (response.status_code, response.json()["code"]) == (404, "user_not_found")


# -- OpenAPI ------------------------------------------------------------------------------------
V1_ROUTES = {
    ("post", "/v1/generations"),
    ("get", "/v1/generations"),
    ("get", "/v1/generations/{generation_id}"),
    ("post", "/v1/generations/{generation_id}/cancel"),
    ("get", "/v1/users/{user_id}"),
    ("get", "/v1/users/{user_id}/transactions"),
    ("get", "/v1/catalog"),
    ("post", "/v1/admin/users"),
    ("post", "/v1/admin/users/{user_id}/credits"),
    ("post", "/v1/admin/users/{user_id}/keys"),
    ("delete", "/v1/admin/keys/{key_id}"),
    ("put", "/v1/admin/catalog/{kind}/{name}"),
    ("put", "/v1/admin/models/{name}"),
    ("get", "/v1/admin/webhooks/secret"),
}


def v1_operations(server: Server) -> dict[tuple[str, str], dict[str, Any]]:
    response = httpx.get(f"{server.url}/openapi.json", timeout=10)  # no key needed
    assert response.status_code == 200
    return {
        (method, path): operation
        for path, operations in response.json()["paths"].items()
        if path.startswith("/v1")
        for method, operation in operations.items()
    }


def test_openapi_documents_every_v1_route_with_a_summary(server: Server) -> None:
    operations = v1_operations(server)
    assert set(operations) >= V1_ROUTES  # other issues add routes (reports) beside these
    assert all(op.get("summary") for op in operations.values())
    create = operations[("post", "/v1/generations")]
    assert {"202", "200", "402", "409", "422", "429"} <= set(create["responses"])
    assert "requestBody" in create
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])
    assert any(p["name"] == "status" for p in operations[("get", "/v1/generations")]["parameters"])


def test_openapi_documents_the_auth_and_not_found_errors_of_every_v1_route(server: Server) -> None:
    for (_, path), operation in v1_operations(server).items():
        expected = {"401", "403"} | ({"404"} if "{" in path and "catalog" not in path else set())
        assert expected <= set(operation["responses"]), path


def test_the_admin_reads_the_queue_per_model_and_a_user_key_may_not(servers: ServerFactory) -> None:
    server = servers.start(IMAGEGEN_WORKERS="0")  # nobody runs the jobs: they wait
    user_id, user = new_user(server)
    with server.client(server.keys()["admin"]) as admin, user:
        for model in ("model-a", "model-a", "model-b"):
            created = user.post("/v1/generations", json={**BODY, "model": model, "userId": user_id})
            assert created.status_code == 202, created.text

        answer = admin.get("/v1/admin/queues")

        assert answer.status_code == 200, answer.text
        queues = {q["model"]: q for q in answer.json()["queues"]}
        assert (queues["model-a"]["pending"], queues["model-a"]["running"]) == (2, 0)
        assert (queues["model-b"]["pending"], queues["model-b"]["running"]) == (1, 0)
        assert queues["model-a"]["oldestPendingAt"].endswith("Z")
        assert queues["model-a"]["oldestPendingAgeSeconds"] >= 0
        assert user.get("/v1/admin/queues").status_code == 403
