"""The admin routes that bind a model to engines and set its own prices, on a running server.

A bad binding or bad prices is a 422 listing every problem and changes nothing; an unknown model
is a 404; a user's key may not touch them. A model's price shows in the catalog and is what the
next create charges.
"""

from __future__ import annotations

import itertools

import httpx
import pytest

from tests.e2e.helpers import create_user
from tests.support import Server

BODY = {"model": "model-a", "style": "anime", "color": "vibrant", "size": "512x512", "prompt": "a heron"}
OPENAI = {"engine": "openai", "settings": {"model": "dall-e-3", "api_key_env": "OPENAI_API_KEY"}}
SIMULATED = {"engine": "simulated", "settings": {"failure_rate": 0.0, "latency_ms": 5}}
_names = itertools.count()


def new_model(admin: httpx.Client) -> str:
    name = f"bound-{next(_names)}"
    assert admin.put(f"/v1/admin/models/{name}", json={"failureRate": 0.0}).status_code == 200
    return name


def test_a_binding_is_set_read_and_removed_and_the_model_shows_its_engines(admin: httpx.Client) -> None:
    name = new_model(admin)
    unbound = admin.get(f"/v1/admin/models/{name}/deployments")

    put = admin.put(f"/v1/admin/models/{name}/deployments", json={"deployments": [OPENAI, SIMULATED]})
    read = admin.get(f"/v1/admin/models/{name}/deployments")
    model = admin.get(f"/v1/admin/models/{name}").json()
    deleted = admin.delete(f"/v1/admin/models/{name}/deployments")

    assert unbound.status_code == 200 and unbound.json() == {"model": name, "deployments": []}
    assert put.status_code == 200, put.text
    assert put.json() == read.json() == {"model": name, "deployments": [OPENAI, SIMULATED]}
    assert model["engines"] == ["openai", "simulated"] and model["failureRate"] == 0.0
    assert deleted.status_code == 200 and deleted.json()["deployments"] == []
    assert admin.get(f"/v1/admin/models/{name}").json()["engines"] == ["simulated"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"deployments": []}, "deployments"),
        ({"deployments": [{"engine": "dalle-9000"}]}, "deployments[0].engine"),
        (
            {"deployments": [{"engine": "openai", "settings": {"base_url": "ftp://x"}}]},
            "deployments[0].settings.base_url",
        ),
        (
            {"deployments": [{"engine": "openai", "settings": {"api_key": "sk-live-0123456789"}}]},
            "deployments[0].settings.api_key",
        ),
        (
            {"deployments": [{"engine": "openai", "settings": {"base_url": "https://u:p@api.example"}}]},
            "deployments[0].settings.base_url",
        ),
        ([1, 2], "deployments"),
    ],
)
def test_a_bad_binding_is_a_422_listing_the_problem_and_changes_nothing(
    admin: httpx.Client, body: object, field: str
) -> None:
    name = new_model(admin)
    assert (
        admin.put(f"/v1/admin/models/{name}/deployments", json={"deployments": [SIMULATED]}).status_code
        == 200
    )

    refused = admin.put(f"/v1/admin/models/{name}/deployments", json=body)

    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "invalid_binding"
    assert field in [e["field"] for e in refused.json()["errors"]]
    assert admin.get(f"/v1/admin/models/{name}/deployments").json()["deployments"] == [SIMULATED]


def test_an_unknown_engine_lists_the_known_ones(admin: httpx.Client) -> None:
    refused = admin.put("/v1/admin/models/model-a/deployments", json={"deployments": [{"engine": "nope"}]})
    [error] = refused.json()["errors"]
    assert {"simulated", "openai", "comfyui", "automatic1111"} <= set(error["allowed"])


def test_not_json_is_a_4xx_and_an_unknown_model_is_a_404(admin: httpx.Client) -> None:
    garbled = admin.put(
        "/v1/admin/models/model-a/deployments", content=b"{nope", headers={"content-type": "application/json"}
    )
    missing = [
        admin.get("/v1/admin/models/model-zz"),
        admin.get("/v1/admin/models/model-zz/deployments"),
        admin.put("/v1/admin/models/model-zz/deployments", json={"deployments": [SIMULATED]}),
        admin.delete("/v1/admin/models/model-zz/deployments"),
        admin.put("/v1/admin/models/model-zz/prices", json={"512x512": 2}),
        admin.delete("/v1/admin/models/model-zz/prices"),
    ]
    assert garbled.status_code in (400, 422), garbled.text
    assert [r.status_code for r in missing] == [404] * 6
    assert {r.json()["code"] for r in missing} == {"model_not_found"}
    assert admin.get("/v1/catalog").json()["models"] and "model-zz" not in admin.get("/v1/catalog").text


def test_a_users_key_may_not_read_or_set_bindings_or_prices(server: Server) -> None:
    with server.client(server.keys()["testUser1"]) as client:
        answers = [
            client.get("/v1/admin/models/model-a/deployments"),
            client.put("/v1/admin/models/model-a/deployments", json={"deployments": [SIMULATED]}),
            client.put("/v1/admin/models/model-a/prices", json={"512x512": 1}),
        ]
    assert [r.status_code for r in answers] == [403, 403, 403]


def test_a_models_price_shows_in_the_catalog_and_is_charged_on_the_next_create(
    server: Server, admin: httpx.Client
) -> None:
    name = new_model(admin)
    user_id = f"pricing-{next(_names)}"
    with server.client(create_user(server, user_id, 20)) as client:
        before = client.post("/v1/generations", json={**BODY, "model": name})
        priced = admin.put(f"/v1/admin/models/{name}/prices", json={"512x512": 6})
        after = client.post("/v1/generations", json={**BODY, "model": name})
        listed = {m["name"]: m["prices"] for m in client.get("/v1/catalog").json()["models"]}
        dropped = admin.delete(f"/v1/admin/models/{name}/prices")
        again = client.post("/v1/generations", json={**BODY, "model": name})
    assert priced.status_code == 200 and priced.json() == {"512x512": 6}
    assert [r.json()["cost"] for r in (before, after, again)] == [1, 6, 1]
    assert listed[name] == {"512x512": 6, "1024x1024": 3, "1024x1792": 4}
    assert listed["model-a"]["512x512"] == 1
    assert dropped.json() == {} and admin.get(f"/v1/admin/models/{name}/prices").json() == {}
    assert admin.get(f"/v1/users/{user_id}").json()["credits"] == 20 - 1 - 6 - 1


@pytest.mark.parametrize("body", [{"4096x4096": 2}, {"512x512": 0}, {"512x512": "2"}, {"512x512": 2.5}, [2]])
def test_bad_prices_are_a_422_and_change_nothing(admin: httpx.Client, body: object) -> None:
    name = new_model(admin)
    assert admin.put(f"/v1/admin/models/{name}/prices", json={"1024x1024": 4}).status_code == 200

    refused = admin.put(f"/v1/admin/models/{name}/prices", json=body)

    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "invalid_prices" and refused.json()["errors"]
    assert admin.get(f"/v1/admin/models/{name}/prices").json() == {"1024x1024": 4}


def deep(levels: int) -> object:
    value: object = "{{prompt}}"
    for _ in range(levels):
        value = {"inputs": value}
    return value


@pytest.mark.parametrize(
    "settings",
    [
        {"base_url": "http://gpu:8188", "workflow": {"1": deep(40)}},
        {"base_url": "http://gpu:8188", "workflow": {"1": deep(900)}},
        {"base_url": "http://gpu:8188", "workflow": {"__name__": {"class_type": "X", "inputs": {}}}},
        {"base_url": "http://gpu:8188", "workflow": {"": {"class_type": "X", "inputs": {}}}},
        {"base_url": "http://gpu:8188", "negative_prompt": "nul\x00here", "workflow": {}},
        {
            "base_url": "http://gpu:8188",
            "workflow": {"1": {"class_type": "X", "inputs": {"t": "x" * 300_000}}},
        },
    ],
)
def test_a_binding_no_backend_could_store_is_a_422_not_a_500(admin: httpx.Client, settings: object) -> None:
    body = {"deployments": [{"engine": "comfyui", "settings": settings}]}

    refused = admin.put("/v1/admin/models/model-a/deployments", json=body)

    assert refused.status_code in (413, 422), refused.text
    assert admin.get("/v1/admin/models/model-a/deployments").json()["deployments"] == []
