"""Webhook rules: where a generation may send them, how a delivery is signed, when it is retried.

Signatures follow the Standard Webhooks scheme (as Replicate's do): the headers `webhook-id` (the same
on every retry of one delivery), `webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`), keyed with the deployment's secret
(`whsec_<base64 key>`). A receiver recomputes the HMAC over the raw body and compares in constant
time, rejects timestamps more than 5 minutes off, and ignores ids it has already processed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import SplitResult, urlsplit

from imagegen.domain.generation import GenerationRequest, to_resource
from imagegen.domain.ids import new_id

SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_is_valid(secret: str) -> bool:
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        return len(_key(secret)) >= 24
    except ValueError:
        return False


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, message_id: str, timestamp: int, body: bytes, signature_header: str) -> bool:
    """What a receiver does: true if any of the header's space-separated signatures matches."""
    expected = sign(secret, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signature_header.split())


# -- where a webhook may go ----------------------------------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOW_PRIVATE_SETTING = "IMAGEGEN_WEBHOOK_ALLOW_PRIVATE"
# The cloud providers' instance metadata services: never a webhook, whatever the settings say.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 6052 NAT64, RFC 8215).
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
DNS_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# WHATWG URL: a host whose last label is a number is an IPv4 address (127.1, 0x7f.1, 2130706433 ...).
NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
CANONICAL_IPV4 = re.compile(
    r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$"
)


class WebhookRefused(ValueError):
    """A webhook URL or address that imagegen will not send to; the message says why."""


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL parsed strictly: what to connect to and what to ask for there."""

    scheme: str
    host: str  # lower case, without a trailing dot; an IPv6 address without its brackets
    port: int
    target: str  # path and query, as sent on the request line
    address: IPAddress | None  # when the URL names an address rather than a host name

    @property
    def default_port(self) -> bool:
        return self.port == (443 if self.scheme == "https" else 80)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, ipaddress.IPv6Address) else self.host
        return host if self.default_port else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """scheme://host:port, what log lines show (a path or query may carry the receiver's token)."""
        return f"{self.scheme}://{self.host_header}"

    def url_for(self, address: IPAddress) -> str:
        """The URL that reaches this target at `address` (the Host header and TLS name stay the host's)."""
        shown = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{shown}:{self.port}{self.target}"


def parse_url(url: str, *, allow_private: bool) -> WebhookTarget:
    """The webhook's target, or WebhookRefused saying why it may not be one.

    Strict on purpose: an address must be written the standard way (four decimal numbers, or an
    IPv6 literal in brackets), since resolvers read 2130706433, 0x7f.1 or 127.1 as 127.0.0.1; a host
    name is checked again at delivery, once resolved (see `address_problem`).
    """
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(c <= " " or c in "\x7f\\" for c in url):
        raise WebhookRefused(
            "webhook URL must be ASCII without spaces, control characters or backslashes "
            "(punycode for an international host name, percent-encoding in the path)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"webhook is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise WebhookRefused("webhook must be an absolute http(s) URL")
    if "@" in parts.netloc:
        raise WebhookRefused("webhook URL may not carry a user name or password")
    if port is None and parts.netloc.endswith(":") or port == 0:
        raise WebhookRefused("webhook port must be a number from 1 to 65535")
    host, address = _host(parts.netloc.rpartition(":")[0] if port is not None else parts.netloc)
    target = WebhookTarget(scheme, host, port or (443 if scheme == "https" else 80), _target(parts), address)
    problem = host_problem(target, allow_private=allow_private)
    if problem:
        raise WebhookRefused(problem)
    return target


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why a webhook URL is refused at create time, or None."""
    try:
        parse_url(url, allow_private=allow_private)
    except WebhookRefused as exc:
        return str(exc)
    return None


def _host(netloc_host: str) -> tuple[str, IPAddress | None]:
    if netloc_host.startswith("["):
        literal = netloc_host[1:].removesuffix("]").lower()
        if "%" in literal:
            raise WebhookRefused("webhook host may not be an IPv6 address with a zone")
        try:
            return literal, ipaddress.IPv6Address(literal)
        except ValueError:
            raise WebhookRefused(f"webhook host [{literal}] is not an IPv6 address") from None
    host = netloc_host.lower()
    labels = host.removesuffix(".").split(".")
    if not host or len(host) > 253:
        raise WebhookRefused("webhook URL needs a host name of at most 253 characters")
    if NUMERIC_LABEL.match(labels[-1]):
        if not CANONICAL_IPV4.match(host):
            raise WebhookRefused(
                f"webhook host '{host}' is an IPv4 address written in a non-standard form: "
                "write it as four decimal numbers (e.g. 203.0.113.7)"
            )
        return host, ipaddress.IPv4Address(host)
    if not all(DNS_LABEL.match(label) for label in labels):
        raise WebhookRefused(f"webhook host '{host}' is not a valid host name")
    return host.removesuffix("."), None


def _target(parts: SplitResult) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def host_problem(target: WebhookTarget, *, allow_private: bool) -> str | None:
    """What is wrong with the target's host before it is resolved (names and literal addresses)."""
    if target.address is not None:
        return address_problem(target.address, allow_private=allow_private)
    if not allow_private and (target.host == "localhost" or target.host.endswith(".localhost")):
        return f"webhook may not point at localhost (set {ALLOW_PRIVATE_SETTING}=true for local use)"
    return None


def address_problem(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why imagegen will not connect to `address` for a webhook, or None.

    Checked on the address itself and on every IPv4 address it carries (IPv4-mapped and
    -compatible, NAT64, 6to4, Teredo), since those reach the IPv4 host they name.
    """
    carried = (*_embedded(address), address)
    if any(a in METADATA_ADDRESSES for a in carried):
        return f"webhook may not point at {address}, a cloud metadata address"
    if allow_private:
        return None
    for candidate in carried:
        kind = _non_public_kind(candidate)
        if kind:
            shown = str(address) if candidate == address else f"{address} (which carries {candidate})"
            article = "an" if kind[0] in "aeiou" else "a"
            return (
                f"webhook may not point at {shown}, {article} {kind} address "
                f"(set {ALLOW_PRIVATE_SETTING}=true for local use)"
            )
    return None


def _embedded(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found += list(address.teredo)
    if any(address in prefix for prefix in NAT64_PREFIXES) or (
        address in IPV4_COMPATIBLE and int(address) > 1
    ):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _non_public_kind(address: IPAddress) -> str | None:
    for kind, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


def next_attempt(attempts: int, first: datetime, now: datetime, *, max_age: timedelta) -> datetime | None:
    """Exponential backoff (1 s, 2 s, 4 s ... capped at 5 min) until `max_age` after the first try."""
    delay = timedelta(seconds=min(2 ** max(attempts - 1, 0), 300))
    retry_at = now + delay
    return retry_at if retry_at - first <= max_age else None


@dataclass(frozen=True)
class WebhookDelivery:
    id: str
    generation_request_id: str
    event: str
    url: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class DeliveryState:
    """A delivery as an operator sees it: where it stands, how often it was tried, why it failed."""

    id: str
    event: str
    url: str
    state: str  # pending | delivered | abandoned
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


DELIVERY_ID_PREFIX = "msg_"


def delivery_of(request: GenerationRequest, event: str, now: datetime) -> WebhookDelivery | None:
    """The delivery that `event` (start, completed) makes for `request`, or None if it asked for none.

    Its id is the `webhook-id` the receiver sees, the same on every retry; its payload is the
    generation resource as it stands at the event.
    """
    if request.webhook is None or not request.wants_webhook(event):
        return None
    return WebhookDelivery(
        id=DELIVERY_ID_PREFIX + new_id(),
        generation_request_id=request.id,
        event=event,
        url=request.webhook,
        payload={"type": f"generation.{event}", "data": to_resource(request)},
        attempts=0,
        created_at=now,
    )
