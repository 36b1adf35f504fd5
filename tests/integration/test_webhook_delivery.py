"""Webhook delivery: each attempt resolves the host once, checks every address, connects to a checked one.

The dispatcher runs its passes on the test's event loop against a real SQLite database and a real
receiver on 127.0.0.1 (plain HTTP, or TLS with a certificate from a test CA). Where a host name must
resolve to a chosen address, the dispatcher is given a resolver that answers for names reserved
never to exist in DNS (RFC 6761's .invalid, .test): had anything looked the name up a second time,
the connection could not have been made at all.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import select

from imagegen.background.webhooks import Dispatcher
from imagegen.clock import utcnow
from imagegen.domain.generation import GenerationSpec, NewGeneration
from imagegen.domain.ids import new_id
from imagegen.domain.webhooks import IPAddress, new_secret
from imagegen.ports import Lease
from imagegen.settings import Settings
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.adapter import SqlStorage
from tests.support import migrated_sql

LOOPBACK = ipaddress.ip_address("127.0.0.1")


class Receiver:
    """Records the Host header of every POST it gets; TLS when given a certificate."""

    def __init__(self, certificate: trustme.LeafCert | None = None) -> None:
        self.hosts: list[str] = []
        hosts = self.hosts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                hosts.append(self.headers.get("host", ""))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            certificate.configure_cert(context)
            self.http.socket = context.wrap_socket(self.http.socket, server_side=True)
        self.port = self.http.server_address[1]
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
async def storage(sqlite_url: str) -> AsyncIterator[SqlStorage]:
    async for storage in migrated_sql(sqlite_url):
        yield storage


class Resolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"no such host: {host}")
        return [ipaddress.ip_address(a) for a in self.answers[host]]


def dispatcher(
    storage: SqlStorage,
    resolver: Any = None,
    *,
    allow_private: bool = False,
    verify: ssl.SSLContext | None = None,
    **settings: Any,
) -> Dispatcher:
    options: dict[str, Any] = {"resolver": resolver} if resolver is not None else {}
    if verify is not None:
        options["verify"] = verify
    config = Settings(data_dir=Path("unused"), webhook_allow_private=allow_private, **settings)
    return Dispatcher(storage, config, new_secret(), "http://127.0.0.1:8080", **options)


async def delivery_to(storage: SqlStorage, url: str) -> str:
    """A completed generation whose webhook is `url`, stored as is (as rows from before may be)."""
    spec = GenerationSpec("testUser1", "model-a", "anime", "vibrant", "512x512", "a lark")
    new = NewGeneration(new_id(), spec, 1, utcnow(), webhook=url, webhook_events=frozenset({"completed"}))
    request, _ = await storage.debit_and_enqueue(new)
    now = utcnow()
    job = await storage.claim_job(Lease("w", now + timedelta(seconds=30)), now)
    assert job is not None and job.id == request.id
    assert await storage.complete(job.id, "w", "/images/x.png", now)
    return request.id


def outcome(storage: SqlStorage, request_id: str) -> tuple[str, int, str | None]:
    wd = t.webhook_deliveries
    query = select(wd.c.state, wd.c.attempts, wd.c.last_error).where(wd.c.generation_request_id == request_id)
    with storage.engine.connect() as conn:
        state, attempts, error = conn.execute(query).one()
    return state, attempts, error


async def run_once(sender: Dispatcher) -> int:
    return await sender.deliver_due()


def loopback_names() -> list[str]:
    """Host names the system resolves to a loopback address, other than localhost (/etc/hosts)."""
    names = []
    for line in Path("/etc/hosts").read_text().splitlines():
        address, *aliases = line.split("#")[0].split() or [""]
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            continue
        names += [a for a in aliases if loopback and "localhost" not in a]
    return names


@pytest.mark.parametrize(
    "answers",
    [
        ["127.0.0.1"],
        ["::1"],
        ["10.0.0.7"],
        ["169.254.169.254"],
        ["::ffff:127.0.0.1"],
        ["1.1.1.1", "127.0.0.1"],
    ],
    ids=["loopback", "IPv6 loopback", "private", "metadata", "IPv4-mapped", "one of two addresses"],
)
async def test_a_host_name_that_resolves_to_a_non_public_address_is_never_connected_to(
    storage: SqlStorage, receiver: Receiver, answers: list[str]
) -> None:
    request_id = await delivery_to(storage, f"http://rebind.test:{receiver.port}/hook")
    assert await run_once(dispatcher(storage, Resolver({"rebind.test": answers}))) == 1
    assert receiver.hosts == []
    state, attempts, error = outcome(storage, request_id)
    assert (state, attempts) == ("pending", 1)  # failed, retried later until its deadline
    assert error is not None and "rebind.test resolves to" in error


async def test_a_name_from_the_hosts_file_that_means_loopback_is_refused_by_the_real_resolver(
    storage: SqlStorage, receiver: Receiver
) -> None:
    names = loopback_names()
    if not names:
        pytest.skip("no name other than localhost maps to a loopback address in /etc/hosts")
    request_id = await delivery_to(storage, f"http://{names[0]}:{receiver.port}/hook")
    await run_once(dispatcher(storage))
    assert receiver.hosts == []
    assert "loopback" in (outcome(storage, request_id)[2] or "")


async def test_a_delivery_connects_to_the_address_it_checked_and_keeps_the_host_name(
    storage: SqlStorage, receiver: Receiver
) -> None:
    resolver = Resolver({"hooks.invalid": ["127.0.0.1"]})
    request_id = await delivery_to(storage, f"http://hooks.invalid:{receiver.port}/hook?token=t")
    await run_once(dispatcher(storage, resolver, allow_private=True))
    assert outcome(storage, request_id) == ("delivered", 1, None)
    assert receiver.hosts == [f"hooks.invalid:{receiver.port}"]
    assert resolver.asked == ["hooks.invalid"]  # one lookup, by the dispatcher


@pytest.mark.parametrize("certified", ["hooks.invalid", "other.invalid"])
async def test_tls_to_a_checked_address_verifies_the_certificate_against_the_host_name(
    storage: SqlStorage, certified: str
) -> None:
    ca = trustme.CA()
    server = Receiver(ca.issue_cert(certified))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    try:
        request_id = await delivery_to(storage, f"https://hooks.invalid:{server.port}/hook")
        resolver = Resolver({"hooks.invalid": ["127.0.0.1"]})
        await run_once(dispatcher(storage, resolver, allow_private=True, verify=client_context))
        state, _, error = outcome(storage, request_id)
    finally:
        server.close()
    if certified == "hooks.invalid":
        assert (state, error) == ("delivered", None)
        assert server.hosts == [f"hooks.invalid:{server.port}"]
    else:
        assert state == "pending" and "certificate" in (error or "").lower()
        assert server.hosts == []


@pytest.mark.parametrize(
    "url, phrase",
    [
        ("http://ho st/hook", "without spaces"),
        ("http://example.com:99999/hook", "not a valid URL"),
        ("http://[::1", "not a valid URL"),
        ("http://2130706433/hook", "non-standard form"),
        ("http://unknown-host.invalid/hook", "could not resolve"),
    ],
)
async def test_a_delivery_that_cannot_be_made_is_recorded_with_its_reason_and_stops_at_its_deadline(
    storage: SqlStorage, url: str, phrase: str
) -> None:
    first = await delivery_to(storage, url)
    assert await run_once(dispatcher(storage, Resolver({}))) == 1
    state, attempts, error = outcome(storage, first)
    assert (state, attempts) == ("pending", 1) and phrase in (error or "")

    # With a deadline one second after the first try, the first retry (1 s later) is past it.
    second = await delivery_to(storage, url)
    await run_once(dispatcher(storage, Resolver({}), webhook_max_retry_seconds=1))
    state, attempts, error = outcome(storage, second)
    assert (state, attempts) == ("abandoned", 1) and phrase in (error or "")
