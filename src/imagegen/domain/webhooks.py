"""Webhook rules: which URLs a generation may notify, how a delivery is signed, when it is retried.

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
import secrets
from datetime import datetime, timedelta
from urllib.parse import urlsplit

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


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why a webhook URL is refused, or None. Private addresses are refused unless allowed (SSRF)."""
    if len(url) > MAX_URL_LENGTH:
        return f"webhook URL is longer than {MAX_URL_LENGTH} characters"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "webhook must be an absolute http(s) URL"
    if allow_private:
        return None
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        return "webhook may not point at localhost"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a host name: resolved at delivery time
    if not address.is_global:
        return f"webhook may not point at the non-public address {host}"
    return None


def next_attempt(attempts: int, first: datetime, now: datetime, *, max_age: timedelta) -> datetime | None:
    """Exponential backoff (1 s, 2 s, 4 s ... capped at 5 min) until `max_age` after the first try."""
    delay = timedelta(seconds=min(2 ** max(attempts - 1, 0), 300))
    retry_at = now + delay
    return retry_at if retry_at - first <= max_age else None
