"""Webhooks of /v1 generations, delivered to a real receiver on loopback.

The receiver is a plain http.server in a thread that records every delivery and answers each path
with a scripted sequence of statuses (200 once the script runs out).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from imagegen.domain.webhooks import verify
from tests.e2e.helpers import started, wait_for
from tests.support import Server, ServerFactory, free_port

BODY = {"model": "model-a", "style": "anime", "color": "vibrant", "size": "512x512", "prompt": "a lark"}
_paths = itertools.count()


@dataclass(frozen=True)
class Delivery:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload


class Receiver:
    def __init__(self) -> None:
        self.deliveries: dict[str, list[Delivery]] = defaultdict(list)
        self.script: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.deliveries[self.path].append(Delivery(time.monotonic(), headers, body))
                    statuses = receiver.script.get(self.path) or [200]
                    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}{path}"

    def received(self, path: str) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries[path])

    def wait_for(self, path: str, count: int, timeout: float = 15) -> list[Delivery]:
        """The first `count` deliveries to `path`, once they have all arrived."""

        def arrived() -> list[Delivery] | None:
            deliveries = self.received(path)
            return deliveries[:count] if len(deliveries) >= count else None

        return wait_for(arrived, timeout, f"{count} deliveries to {path}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.http.shutdown()
        receiver.http.server_close()


SERVER_ENV = {"IMAGEGEN_WEBHOOK_ALLOW_PRIVATE": "1"}  # the module's server (tests/e2e/conftest.py)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default: webhooks to loopback and private addresses are refused."""
    yield from started(tmp_path_factory, "v1-webhooks-strict")


@pytest.fixture(scope="module")
def secret(server: Server) -> str:
    with server.client(server.keys()["admin"]) as admin:
        response = admin.get("/v1/admin/webhooks/secret")
    assert response.status_code == 200, response.text
    value: str = response.json()["secret"]
    assert value.startswith("whsec_")
    return value


def unique_path() -> str:
    return f"/hooks/{next(_paths)}"


def create(server: Server, body: dict[str, Any], wait: int = 10) -> httpx.Response:
    with server.client(server.keys()["testUser1"]) as client:
        return client.post("/v1/generations", json=body, headers={"Prefer": f"wait={wait}"})


def verified(secret: str, delivery: Delivery) -> bool:
    headers = delivery.headers
    timestamp = int(headers["webhook-timestamp"])
    assert abs(time.time() - timestamp) < 300
    return bool(verify(secret, headers["webhook-id"], timestamp, delivery.body, headers["webhook-signature"]))


def test_a_generation_notifies_start_and_completed_with_signed_deliveries_of_distinct_ids(
    server: Server, receiver: Receiver, secret: str
) -> None:
    path = unique_path()
    body = {**BODY, "webhook": receiver.url(path), "webhookEvents": ["start", "completed"]}
    response = create(server, body)
    assert response.status_code == 200, response.text
    generation = response.json()
    assert generation["webhook"] == receiver.url(path)
    assert generation["webhookEvents"] == ["completed", "start"]

    deliveries = receiver.wait_for(path, 2)
    time.sleep(0.6)  # a dispatcher pass more: no third delivery may follow
    assert len(receiver.received(path)) == 2
    by_type = {d.payload["type"]: d for d in deliveries}
    assert set(by_type) == {"generation.start", "generation.completed"}
    assert all(verified(secret, d) for d in deliveries)
    assert (
        by_type["generation.start"].headers["webhook-id"]
        != by_type["generation.completed"].headers["webhook-id"]
    )
    start, completed = (
        by_type["generation.start"].payload["data"],
        by_type["generation.completed"].payload["data"],
    )
    assert start["id"] == completed["id"] == generation["id"]
    assert start["status"] == "running"
    assert completed["status"] == "completed"
    assert completed["imageUrl"] == generation["imageUrl"]
    assert all(d.headers["content-type"] == "application/json" for d in deliveries)


def test_a_signature_does_not_verify_with_another_secret_or_a_changed_body(
    server: Server, receiver: Receiver, secret: str
) -> None:
    path = unique_path()
    create(server, {**BODY, "webhook": receiver.url(path)})
    [delivery] = receiver.wait_for(path, 1)
    headers, timestamp = delivery.headers, int(delivery.headers["webhook-timestamp"])
    other = "whsec_" + "A" * 43 + "="
    assert verify(secret, headers["webhook-id"], timestamp, delivery.body, headers["webhook-signature"])
    assert not verify(other, headers["webhook-id"], timestamp, delivery.body, headers["webhook-signature"])
    assert not verify(
        secret, headers["webhook-id"], timestamp, delivery.body + b" ", headers["webhook-signature"]
    )
    assert not verify(
        secret, headers["webhook-id"], timestamp + 1, delivery.body, headers["webhook-signature"]
    )


def test_a_receiver_that_fails_twice_gets_the_third_attempt_with_the_same_id_after_backoff(
    server: Server, receiver: Receiver, secret: str
) -> None:
    path = unique_path()
    receiver.script[path] = [500, 500, 200]
    response = create(server, {**BODY, "webhook": receiver.url(path)})
    assert response.json()["status"] == "completed"

    attempts = receiver.wait_for(path, 3)
    time.sleep(1.5)  # past the next backoff step: nothing more after the success
    assert len(receiver.received(path)) == 3
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert all(verified(secret, a) for a in attempts)
    assert len({a.body for a in attempts}) == 1
    first_gap, second_gap = (b.at - a.at for a, b in itertools.pairwise(attempts))
    assert 0.9 <= first_gap < 3.0
    assert 1.9 <= second_gap < 4.0


def test_a_receiver_that_is_down_does_not_hold_up_the_generation(server: Server) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    started = time.monotonic()
    response = create(server, {**BODY, "webhook": nobody, "webhookEvents": ["start", "completed"]})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert time.monotonic() - started < 2.0


def test_unknown_webhook_events_are_a_422_listing_the_allowed_ones(
    server: Server, receiver: Receiver
) -> None:
    response = create(server, {**BODY, "webhook": receiver.url("/x"), "webhookEvents": ["finished"]})
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "webhookEvents" and error["allowed"] == ["start", "completed"]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://10.0.0.7/hook"]
)
def test_a_webhook_to_a_private_address_is_a_422_unless_private_webhooks_are_allowed(
    strict_server: Server, url: str
) -> None:
    server = strict_server
    response = create(server, {**BODY, "webhook": url})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["field"] == "webhook"
    with server.client(server.keys()["testUser1"]) as client:
        assert client.get("/v1/users/testUser1").json()["credits"] == 100


def test_a_webhook_secret_that_cannot_sign_is_refused_at_start(servers: ServerFactory) -> None:
    with pytest.raises(RuntimeError, match="(?i)webhook"):
        servers.start(IMAGEGEN_WEBHOOK_SECRET="hunter2")


# Spellings of 127.0.0.1 and ::1 that resolvers or URL parsers accept, each to the receiver's port.
LOOPBACK_SPELLINGS = [
    "http://2130706433:{port}/h",
    "http://0x7f000001:{port}/h",
    "http://017700000001:{port}/h",
    "http://0177.0.0.1:{port}/h",
    "http://0x7f.0.0.1:{port}/h",
    "http://127.1:{port}/h",
    "http://127.0.0.1.:{port}/h",
    "http://[::ffff:127.0.0.1]:{port}/h",
    "http://[::ffff:7f00:1]:{port}/h",
    "http://[::127.0.0.1]:{port}/h",
    "http://[64:ff9b::7f00:1]:{port}/h",
    "http://[2002:7f00:1::]:{port}/h",
    "http://[0:0:0:0:0:0:0:1]:{port}/h",
    "http://localhost.:{port}/h",
    "http://LOCALHOST:{port}/h",
    "http://[::1",
    "http://ho st:{port}/h",
    "http://127.0.0.1:99999/h",
]


def test_no_spelling_of_loopback_and_no_name_for_it_gets_a_delivery_past_the_guard(
    strict_server: Server, receiver: Receiver
) -> None:
    server, port = strict_server, receiver.http.server_address[1]
    path = unique_path()
    for spelling in LOOPBACK_SPELLINGS:
        url = spelling.format(port=port).replace("/h", path)
        response = create(server, {**BODY, "webhook": url}, wait=0)
        assert response.status_code == 422, (url, response.text)
        [error] = response.json()["errors"]
        assert error["field"] == "webhook", url
    # A host name is resolved at delivery: one that means 127.0.0.1 is accepted, and refused there.
    names = [name for name in ("vm", "runsc", socket.gethostname()) if _is_loopback_name(name)]
    for name in names:
        response = create(server, {**BODY, "webhook": f"http://{name}:{port}{path}"}, wait=10)
        assert response.status_code == 200, response.text
    time.sleep(1.5)  # several dispatcher passes and a retry
    assert receiver.received(path) == []
    with server.client(server.keys()["testUser1"]) as client:
        assert client.get("/v1/users/testUser1").json()["credits"] == 100 - len(names)


def _is_loopback_name(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
