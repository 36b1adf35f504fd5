"""Delivers webhooks from the outbox: signed, retried with backoff, never in a generation's way.

Deliveries are rows that the storage wrote in the same transaction as the state change they report,
so none is lost if a process dies; a dispatcher task claims due rows with a short lease, POSTs
them (several at once, on the event loop), and records the outcome. Each attempt resolves the
receiver's host once, checks every address it got (domain.webhooks.address_problem) and connects
to a checked one, the Host header and the TLS name staying the receiver's: no second lookup,
which DNS rebinding could change.
The deployment's signing secret is `IMAGEGEN_WEBHOOK_SECRET`, or one generated at first use and
kept in the database so that every process signs with the same key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from datetime import timedelta

import httpx

from imagegen import metrics
from imagegen.clock import utcnow
from imagegen.domain import webhooks
from imagegen.domain.webhooks import WebhookDelivery
from imagegen.ports import Outbox
from imagegen.settings import Settings

log = logging.getLogger("imagegen.webhooks")
SECRET_KEY = "webhook_secret"
LEASE = timedelta(seconds=60)
BATCH = 32
CONCURRENCY = 8

Resolver = Callable[[str, int], list[webhooks.IPAddress]]  # blocking: called on a thread


def resolve(host: str, port: int) -> list[webhooks.IPAddress]:
    """Every address the system resolver gives for `host` (what a connection could reach)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found))


class Undeliverable(Exception):
    """This attempt cannot be made (a refused URL or address, a host that does not resolve)."""


async def signing_secret(storage: Outbox, settings: Settings) -> str:
    if settings.webhook_secret:
        return settings.webhook_secret
    return await storage.put_meta_once(SECRET_KEY, webhooks.new_secret())


class Dispatcher:
    def __init__(
        self,
        storage: Outbox,
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
        self.verify = verify

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would make its own lookup
            verify=self.verify,
        )

    async def run(self) -> None:
        """Delivers due webhooks until canceled, looking again every `webhook_poll_seconds` when idle."""
        async with self._client() as client:
            while True:
                try:
                    sent = await self.deliver_due(client)
                except Exception:
                    log.exception("webhook pass failed; will retry")
                    sent = 0
                if sent == 0:
                    await asyncio.sleep(self.settings.webhook_poll_seconds)

    async def deliver_due(self, client: httpx.AsyncClient | None = None) -> int:
        """Sends the due deliveries concurrently, so one slow receiver does not hold up the others."""
        if client is None:
            async with self._client() as own:
                return await self.deliver_due(own)
        now = utcnow()
        due = await self.storage.claim_webhooks(now, now + LEASE, limit=BATCH)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(delivery: WebhookDelivery) -> str | None:
            async with gate:
                return await self._deliver_safely(client, delivery)

        outcomes = await asyncio.gather(*(one(delivery) for delivery in due))
        for delivery, outcome in zip(due, outcomes, strict=True):
            if outcome is not None:
                log.error("webhook %s could not be processed: %s", delivery.id, outcome)
        return len(due)

    async def _deliver_safely(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> str | None:
        try:
            await self.deliver(client, delivery)
        except Exception as exc:  # the lease runs out and the delivery is retried later
            return f"{type(exc).__name__}: {exc}"
        return None

    async def deliver(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
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
            await self._failed(delivery, str(exc), "a refused URL")
            return
        try:
            response = await self._post(client, target, body, headers)
            error = None if response.is_success else f"receiver answered {response.status_code}"
        except Undeliverable as exc:
            error = str(exc)
        except Exception as exc:  # whatever the client refuses is this attempt's failure, recorded
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            await self.storage.webhook_delivered(delivery.id, utcnow())
            metrics.webhook_attempt("delivered")
            return
        await self._failed(delivery, error, target.origin)

    async def _failed(self, delivery: WebhookDelivery, error: str, where: str) -> None:
        max_age = timedelta(seconds=self.settings.webhook_max_retry_seconds)
        retry_at = webhooks.next_attempt(delivery.attempts, delivery.created_at, utcnow(), max_age=max_age)
        log.info("webhook %s to %s failed (%s); retry at %s", delivery.id, where, error, retry_at)
        await self.storage.webhook_failed(delivery.id, error, retry_at)
        metrics.webhook_attempt("retry" if retry_at is not None else "gave_up")

    async def _post(
        self, client: httpx.AsyncClient, target: webhooks.WebhookTarget, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """POSTs to the first checked address that accepts a connection."""
        addresses = await self._addresses(target)
        extensions = {"sni_hostname": target.host} if target.address is None else {}
        headers = {**headers, "host": target.host_header}
        refused: httpx.ConnectError | None = None
        for address in addresses:
            url = target.url_for(address)
            try:
                return await client.post(url, content=body, headers=headers, extensions=extensions)
            except httpx.ConnectError as exc:
                refused = exc
        assert refused is not None  # there is always at least one address
        raise refused

    async def _addresses(self, target: webhooks.WebhookTarget) -> list[webhooks.IPAddress]:
        if target.address is not None:
            return [target.address]
        try:
            addresses = await asyncio.to_thread(self.resolver, target.host, target.port)
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
