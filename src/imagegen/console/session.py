"""The console's session: a signed cookie naming the admin key's hash, and its CSRF token.

The cookie holds `<key hash>.<nonce>.<issued>.<signature>`: never the key itself, and nothing a
browser could change without breaking the HMAC. Every request reads the key again by its hash
through the API's own auth path (api/inputs.py `principal_for_hash`), so a revoked key's session
ends on its next request. The CSRF token is an HMAC of the session's nonce: one per session, sent
in every form and checked on every POST. Before a session exists, the sign-in form is guarded the
same way by a short-lived pre-session cookie (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

COOKIE = "imagegen_console"
PRE_COOKIE = "imagegen_console_signin"
SECRET_KEY = "console_session_secret"  # the meta key the signing secret is kept under
LIFETIME = timedelta(hours=12)
PRE_LIFETIME = timedelta(minutes=30)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _sign(secret: str, *parts: str) -> str:
    message = "|".join(parts).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    key_hash: str
    nonce: str
    issued: int  # seconds since the epoch

    def csrf_token(self, secret: str) -> str:
        return _sign(secret, "csrf", self.nonce)

    def valid_csrf(self, secret: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(secret), token)


def open_session(key_hash: str, now: datetime) -> Session:
    return Session(key_hash, secrets.token_urlsafe(16), int(now.timestamp()))


def encode(session: Session, secret: str) -> str:
    body = f"{session.key_hash}.{session.nonce}.{session.issued}"
    return f"{body}.{_sign(secret, 'session', body)}"


def decode(value: str | None, secret: str, now: datetime) -> Session | None:
    """The session a cookie names, or None if it is missing, forged, malformed or too old."""
    if not value or len(value) > 512:
        return None
    body, _, signature = value.rpartition(".")
    if not hmac.compare_digest(_sign(secret, "session", body), signature):
        return None
    key_hash, nonce, issued = body.split(".")
    if not issued.isdigit() or int(issued) + LIFETIME.total_seconds() < now.timestamp():
        return None
    return Session(key_hash, nonce, int(issued))


def pre_session(secret: str, now: datetime) -> tuple[str, str]:
    """A sign-in form's (cookie value, form token)."""
    value = f"{secrets.token_urlsafe(16)}.{int(now.timestamp())}"
    return value, _sign(secret, "signin", value)


def valid_pre_session(secret: str, cookie: str | None, token: str | None, now: datetime) -> bool:
    if not cookie or not token or len(cookie) > 128:
        return False
    _, _, issued = cookie.rpartition(".")
    if not issued.isdigit() or int(issued) + PRE_LIFETIME.total_seconds() < now.timestamp():
        return False
    return hmac.compare_digest(_sign(secret, "signin", cookie), token)
