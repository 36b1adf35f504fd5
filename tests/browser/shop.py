"""A server for the browser tests, with a shop's data in it: finished, failed, running requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import GENERATION, Server

SLOW_MODEL = "model-slow"  # its jobs hold both workers for the whole module: later ones stay pending


def shop_server(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Server]:
    """Two workers, the models' own failure rates and latencies (no override), some history."""
    server = Server(tmp_path_factory.mktemp(name) / "var", {"IMAGEGEN_WORKERS": "2"}, [])
    server.start()
    try:
        with server.client(server.keys()["admin"]) as admin:
            _seed(admin)
        yield server
    finally:
        server.kill()  # the slow jobs would hold a graceful stop for minutes; the folder is thrown away


def _seed(admin: httpx.Client) -> None:
    for user, credits in (("shop-alice", 500), ("shop-bob", 200)):
        assert admin.post("/v1/admin/users", json={"userId": user, "credits": credits}).status_code == 201
    assert (
        admin.put("/v1/admin/models/model-a", json={"failureRate": 0.3, "latencyMs": 30}).status_code == 200
    )
    assert (
        admin.put("/v1/admin/models/model-b", json={"failureRate": 0.0, "latencyMs": 30}).status_code == 200
    )
    ids = [
        create(admin, user, model=model, size=size, prompt=f"{model} poster {i}")["id"]
        for i, (user, model, size) in enumerate(
            [("shop-alice", "model-a", "512x512"), ("shop-bob", "model-b", "1024x1024")] * 6
        )
    ]
    wait_for(admin, ids, {"completed", "failed"})
    slow = {"failureRate": 0.0, "latencyMs": 600_000, "enabled": True}
    assert admin.put(f"/v1/admin/models/{SLOW_MODEL}", json=slow).status_code == 200
    blockers = [create(admin, "shop-alice", model=SLOW_MODEL)["id"] for _ in range(2)]
    wait_for(admin, blockers, {"running"})
    assert admin.post("/v1/reports", json={}).status_code == 201


def create(admin: httpx.Client, user: str, **fields: Any) -> dict[str, Any]:
    response = admin.post("/v1/generations", json={**GENERATION, "userId": user, **fields})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for(admin: httpx.Client, ids: list[str], statuses: set[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    waiting = set(ids)
    while waiting and time.monotonic() < deadline:
        for request_id in list(waiting):
            if admin.get(f"/v1/generations/{request_id}").json()["status"] in statuses:
                waiting.discard(request_id)
        time.sleep(0.05)
    assert not waiting, f"still not {statuses}: {waiting}"


def shot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
