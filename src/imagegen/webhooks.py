"""Delivers webhooks from the outbox: signed, retried with backoff, never in a generation's way.

Deliveries are rows that the storage wrote in the same transaction as the state change they report,
so none is lost if a process dies; a dispatcher thread claims due rows with a short lease, POSTs
them, and records the outcome. Each attempt resolves the receiver's host once, checks every
address it got (domain.webhooks.address_problem) and connects to a checked one, the Host header
and the TLS name staying the receiver's: no second lookup, which DNS rebinding could change.
The deployment's signing secret is `IMAGEGEN_WEBHOOK_SECRET`, or one generated at first use and
kept in the database so that every process signs with the same key.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx

from imagegen.clock import utcnow
from imagegen.domain import webhooks
from imagegen.domain.webhooks import WebhookDelivery
from imagegen.ports import Storage
from imagegen.settings import Settings

log = logging.getLogger("imagegen.webhooks")
SECRET_KEY = "webhook_secret"
LEASE = timedelta(seconds=60)
BATCH = 32
CONCURRENCY = 8

Resolver = Callable[[str, int], list[webhooks.IPAddress]]


def resolve(host: str, port: int) -> list[webhooks.IPAddress]:
    """Every address the system resolver gives for `host` (what a connection could reach)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found))


class Undeliverable(Exception):
    """This attempt cannot be made (a refused URL or address, a host that does not resolve)."""


def signing_secret(storage: Storage, settings: Settings) -> str:
    if settings.webhook_secret:
        return settings.webhook_secret
    return storage.put_meta_once(SECRET_KEY, webhooks.new_secret())


class Dispatcher:
    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        secret: str,
        base_url: str | None,
        *,
        resolver: Resolver = resolve,
        verify: ssl.SSLContext | bool = True,  # an SSLContext trusting a test's own CA
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.secret = secret
        self.base_url = base_url
        self.resolver = resolver
        self.client = httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would make its own lookup
            verify=verify,
        )
        self.pool = ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="imagegen-webhook")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="imagegen-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.deliver_due()
            except Exception:
                log.exception("webhook pass failed; will retry")
                sent = 0
            if sent == 0:
                self._stop.wait(self.settings.webhook_poll_seconds)

    def deliver_due(self) -> int:
        """Sends the due deliveries concurrently, so one slow receiver does not hold up the others."""
        now = utcnow()
        due = self.storage.claim_webhooks(now, now + LEASE, limit=BATCH)
        for delivery, outcome in zip(due, self.pool.map(self._deliver_safely, due), strict=True):
            if outcome is not None:
                log.error("webhook %s could not be processed: %s", delivery.id, outcome)
        return len(due)

    def _deliver_safely(self, delivery: WebhookDelivery) -> str | None:
        try:
            self.deliver(delivery)
        except Exception as exc:  # the lease runs out and the delivery is retried later
            return f"{type(exc).__name__}: {exc}"
        return None

    def deliver(self, delivery: WebhookDelivery) -> None:
        body = json.dumps(self._payload(delivery), separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "imagegen-webhooks",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": webhooks.sign(self.secret, delivery.id, timestamp, body),
        }
        try:
            target = webhooks.parse_url(delivery.url, allow_private=self.settings.webhook_allow_private)
        except webhooks.WebhookRefused as exc:
            self._failed(delivery, str(exc), "a refused URL")
            return
        try:
            response = self._post(target, body, headers)
            error = None if response.is_success else f"receiver answered {response.status_code}"
        except Undeliverable as exc:
            error = str(exc)
        except Exception as exc:  # whatever the client refuses is this attempt's failure, recorded
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self.storage.webhook_delivered(delivery.id, utcnow())
            return
        self._failed(delivery, error, target.origin)

    def _failed(self, delivery: WebhookDelivery, error: str, where: str) -> None:
        max_age = timedelta(seconds=self.settings.webhook_max_retry_seconds)
        retry_at = webhooks.next_attempt(delivery.attempts, delivery.created_at, utcnow(), max_age=max_age)
        log.info("webhook %s to %s failed (%s); retry at %s", delivery.id, where, error, retry_at)
        self.storage.webhook_failed(delivery.id, error, retry_at)

    def _post(self, target: webhooks.WebhookTarget, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POSTs to the first checked address that accepts a connection."""
        addresses = self._addresses(target)
        extensions = {"sni_hostname": target.host} if target.address is None else {}
        headers = {**headers, "host": target.host_header}
        refused: httpx.ConnectError | None = None
        for address in addresses:
            url = target.url_for(address)
            try:
                return self.client.post(url, content=body, headers=headers, extensions=extensions)
            except httpx.ConnectError as exc:
                refused = exc
        assert refused is not None  # there is always at least one address
        raise refused

    def _addresses(self, target: webhooks.WebhookTarget) -> list[webhooks.IPAddress]:
        if target.address is not None:
            return [target.address]
        try:
            addresses = self.resolver(target.host, target.port)
        except (OSError, UnicodeError) as exc:
            raise Undeliverable(f"could not resolve {target.host}: {exc}") from None
        if not addresses:
            raise Undeliverable(f"{target.host} resolved to no address")
        allow_private = self.settings.webhook_allow_private
        for address in addresses:
            problem = webhooks.address_problem(address, allow_private=allow_private)
            if problem:  # one refused address refuses the host: the resolver chose which we would get
                raise Undeliverable(f"{target.host} resolves to {address}: {problem}")
        return addresses

    def _payload(self, delivery: WebhookDelivery) -> dict[str, object]:
        data = dict(delivery.payload.get("data", {}))
        image = data.get("imageUrl")
        if isinstance(image, str) and image.startswith("/") and self.base_url:
            data["imageUrl"] = self.base_url.rstrip("/") + image
        return {**delivery.payload, "data": data}
