"""What every HTTP edge reads, framework-free: the FastAPI app and the Cloud Functions both use it.

A JSON body, paging parameters, times in query parameters, the caller's principal from its bearer
key, the create's authorization. Keeping them here, rather than in each edge, is what keeps the two
deployments' behaviour identical (their answers are in api/answers.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from imagegen import service
from imagegen.domain.errors import InvalidInput, Unauthenticated
from imagegen.domain.validation import bounded_int
from imagegen.ports import Keys
from imagegen.ratelimit import RateLimiter
from imagegen.service.config_cache import ConfigCache
from imagegen.service.keys import ADMIN, MISSING_KEY, UNKNOWN_KEY, Principal
from imagegen.settings import Settings

LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


async def principal_for(storage: Keys, settings: Settings, authorization: str | None) -> Principal:
    """The caller named by an `Authorization: Bearer <key>` header (everyone is admin with --no-auth)."""
    if settings.no_auth:
        return ADMIN
    token = bearer_token(authorization)
    if not token:
        raise Unauthenticated(MISSING_KEY)
    return await principal_for_hash(storage, service.hash_key(token))


async def principal_for_hash(storage: Keys, key_hash: str) -> Principal:
    """The caller whose key has this hash, read now (the API's routes and the console's pages)."""
    key = await service.authenticate_hash(storage, key_hash)
    return Principal(key.user_id, key_hash, key.id)


async def cached_principal(config: ConfigCache, settings: Settings, authorization: str | None) -> Principal:
    """The caller of a create, from the process's key cache when it is there.

    A cached key is not taken on trust: the debit checks the configuration version that any
    revocation changes (see service/config_cache.py), and the create is redone if it changed.
    """
    if settings.no_auth:
        return ADMIN
    token = bearer_token(authorization)
    if token is None:
        raise Unauthenticated(MISSING_KEY)
    key_hash = service.hash_key(token)
    key = await config.principal_key(key_hash)
    if key is None:
        raise Unauthenticated(UNKNOWN_KEY)
    return Principal(key.user_id, key_hash, key.id)


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, key = (authorization or "").partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


def create_guard(limiter: RateLimiter, principal: Principal) -> Callable[[str], None]:
    """Runs once a create is valid and before it is written: the key's right to act, then the rate."""

    def guard(user_id: str) -> None:
        principal.may_act_for(user_id)
        limiter.take(user_id)

    return guard


def create_rules(settings: Settings) -> service.CreateRules:
    """The create's rules as the settings give them (the same for the server and the functions)."""
    return service.CreateRules(
        max_prompt_length=settings.max_prompt_length,
        allow_private_webhooks=settings.webhook_allow_private,
        max_in_flight=settings.max_in_flight_per_user,
    )


def parse_json(raw: bytes) -> Any:
    try:
        body = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Request body must be a JSON object (not valid JSON: {exc})") from exc
    except RecursionError as exc:
        raise InvalidInput("Request body is nested too deeply") from exc
    except ValueError as exc:  # an integer of more than 4,300 digits, which Python will not convert
        raise InvalidInput(f"Request body has a number too long to read ({exc})") from exc
    if LONE_SURROGATE.search(raw):  # rare: escaped surrogates, which may not be valid pairs
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise InvalidInput("Request body contains invalid Unicode (an unpaired surrogate)") from exc
    return body


def page_size(value: str | None, settings: Settings) -> int:
    if value is None or value == "":
        return settings.default_page_size
    size = bounded_int(value, 1, settings.max_page_size)
    if size is None:
        raise InvalidInput(f"limit must be an integer from 1 to {settings.max_page_size}")
    return size


def instant(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time with its zone from a query parameter (numbers are not times)."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value) if len(value) <= 64 else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidInput(f"{name} must be an ISO 8601 time with a zone, e.g. 2026-11-26T00:00:00Z")
    return parsed


def absolute_url(base: str, path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return base.rstrip("/") + path
