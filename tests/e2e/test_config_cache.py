"""Each API process caches the catalog and the keys for its creates; edits made anywhere still apply at once.

Two `imagegen serve` processes share one database. Process A creates first (so its cache holds the
catalog and the key), then process B changes something; A's very next create must see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import GENERATION, Server, ServerFactory


@pytest.fixture
def pair(servers: ServerFactory, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    data_dir = tmp_path / "shared"
    first = servers.start(data_dir=data_dir, IMAGEGEN_WORKERS="0")
    second = servers.start("--role", "api", data_dir=data_dir)
    yield first, second


def new_user_key(admin: httpx.Client, user_id: str, credits: int) -> tuple[str, str]:
    assert admin.post("/v1/admin/users", json={"userId": user_id, "credits": credits}).status_code == 201
    issued = admin.post(f"/v1/admin/users/{user_id}/keys").json()
    return issued["keyId"], issued["apiKey"]


def test_a_price_or_option_changed_in_another_process_applies_to_the_next_create(
    pair: tuple[Server, Server],
) -> None:
    cached, other = pair
    admin_key = cached.keys()["admin"]
    with cached.client(admin_key) as admin_a, other.client(admin_key) as admin_b:
        _, key = new_user_key(admin_a, "pricey", 100)
        with cached.client(key) as client:
            before = client.post("/v1/generations", json={**GENERATION, "userId": "pricey"})
            assert admin_b.put("/v1/admin/catalog/sizes/512x512", json={"cost": 7}).status_code == 200
            after = client.post("/v1/generations", json={**GENERATION, "userId": "pricey"})
            assert admin_b.put("/v1/admin/catalog/styles/anime", json={"enabled": False}).status_code == 200
            disabled = client.post("/v1/generations", json={**GENERATION, "userId": "pricey"})
            assert admin_b.put("/v1/admin/catalog/styles/pixel art", json={}).status_code == 200
            added = client.post(
                "/v1/generations", json={**GENERATION, "userId": "pricey", "style": "pixel art"}
            )
        credits = admin_a.get("/v1/users/pricey").json()["credits"]
    assert (before.status_code, before.json()["cost"]) == (202, 1)
    assert (after.status_code, after.json()["cost"]) == (202, 7)
    assert disabled.status_code == 422 and disabled.json()["code"] == "validation_error"
    assert (added.status_code, added.json()["style"]) == (202, "pixel art")
    assert credits == 100 - 1 - 7 - 7


def test_a_key_revoked_in_another_process_is_refused_on_the_next_create(pair: tuple[Server, Server]) -> None:
    cached, other = pair
    admin_key = cached.keys()["admin"]
    with cached.client(admin_key) as admin_a, other.client(admin_key) as admin_b:
        key_id, key = new_user_key(admin_a, "revoked", 100)
        with cached.client(key) as client:
            first = client.post("/v1/generations", json={**GENERATION, "userId": "revoked"})
            assert admin_b.delete(f"/v1/admin/keys/{key_id}").status_code == 204
            refused = client.post("/v1/generations", json={**GENERATION, "userId": "revoked"})
            case_study = client.post("/createGenerationRequest", json={**GENERATION, "userId": "revoked"})
        credits = admin_a.get("/v1/users/revoked").json()["credits"]
    assert first.status_code == 202
    assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"
    assert case_study.status_code == 401
    assert credits == 99  # only the first create was debited


def test_a_models_price_and_binding_set_in_another_process_apply_to_the_next_create(
    pair: tuple[Server, Server],
) -> None:
    cached, other = pair
    admin_key = cached.keys()["admin"]
    binding = {"deployments": [{"engine": "simulated", "settings": {"failure_rate": 0}}]}
    with cached.client(admin_key) as admin_a, other.client(admin_key) as admin_b:
        _, key = new_user_key(admin_a, "modelprice", 100)
        with cached.client(key) as client:
            before = client.post("/v1/generations", json={**GENERATION, "userId": "modelprice"})
            assert admin_b.put("/v1/admin/models/model-a/prices", json={"512x512": 5}).status_code == 200
            assert admin_b.put("/v1/admin/models/model-a/deployments", json=binding).status_code == 200
            after = client.post("/v1/generations", json={**GENERATION, "userId": "modelprice"})
            listed = {m["name"]: m["prices"] for m in client.get("/v1/catalog").json()["models"]}
        seen = admin_a.get("/v1/admin/models/model-a").json()
    assert GENERATION["model"] == "model-a" and GENERATION["size"] == "512x512"
    assert (before.json()["cost"], after.json()["cost"]) == (1, 5)
    assert listed["model-a"]["512x512"] == 5
    assert seen["engines"] == ["simulated"] and seen["deployments"] == binding["deployments"]
    assert seen["prices"] == {"512x512": 5}
