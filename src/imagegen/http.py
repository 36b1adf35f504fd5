"""What every HTTP edge shares, framework-free: the FastAPI app and the Cloud Functions both use it.

Reading a JSON body, paging parameters, bearer-key principals, the case-study routes' answers and
their error bodies. Keeping them here, rather than in each edge, is what keeps the two deployments'
behaviour identical.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imagegen import service
from imagegen.domain.errors import (
    Forbidden,
    ImagegenError,
    InsufficientCredits,
    InvalidInput,
    TooManyRequests,
    Unauthenticated,
)
from imagegen.domain.generation import GenerationRequest, Status, iso
from imagegen.domain.ledger import LedgerEntry
from imagegen.domain.paging import Page
from imagegen.domain.users import User
from imagegen.domain.validation import Problem, bounded_int
from imagegen.ports import Storage
from imagegen.ratelimit import RateLimiter
from imagegen.settings import Settings

FAILED_MESSAGE = "AI generation failed, credits refunded."
LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user key acts only on its own user; an admin key (user_id None) on all."""

    user_id: str | None
    key_hash: str | None = field(default=None, compare=False, repr=False)  # None with --no-auth

    @property
    def is_admin(self) -> bool:
        return self.user_id is None

    def may_act_for(self, user_id: str) -> None:
        if not self.is_admin and user_id != self.user_id:
            raise Forbidden("This API key may only act on its own user", userId=user_id)

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("This route needs an admin key")


ADMIN = Principal(None)


def principal_for(storage: Storage, settings: Settings, authorization: str | None) -> Principal:
    """The caller named by an `Authorization: Bearer <key>` header (everyone is admin with --no-auth)."""
    if settings.no_auth:
        return ADMIN
    token = bearer_token(authorization)
    return Principal(service.authenticate(storage, token).user_id, service.hash_key(token or ""))


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, key = (authorization or "").partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


def create_guard(limiter: RateLimiter, principal: Principal) -> Callable[[str], None]:
    """Runs once a create is valid and before it is written: the key's right to act, then the rate."""

    def guard(user_id: str) -> None:
        principal.may_act_for(user_id)
        limiter.take(user_id)

    return guard


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


# -- the case-study routes' answers ------------------------------------------------------------
def generation_answer(done: GenerationRequest, base_url: str) -> tuple[int, dict[str, Any]]:
    """createGenerationRequest's status and body: 200 done, 500 failed (refunded), 202 still going."""
    body: dict[str, Any] = {
        "generationRequestId": done.id,
        "deductedCredits": done.cost,
        "imageUrl": absolute_url(base_url, done.image_url),
        "status": done.status.value,
    }
    if done.status is Status.FAILED:
        return 500, {"error": FAILED_MESSAGE, "reason": done.error, **body}
    return (200 if done.status.terminal else 202), body


def credits_answer(user: User, page: Page[LedgerEntry]) -> dict[str, Any]:
    return {
        "currentCredits": user.credits,
        "transactions": [ledger_entry(entry) for entry in page.items],
        "nextCursor": page.next_cursor,
    }


def ledger_entry(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "type": entry.type.value,
        "credits": entry.credits,
        "generationRequestId": entry.generation_request_id,
        "reason": entry.reason,
        "balanceAfter": entry.balance_after,
        "timestamp": iso(entry.timestamp),
    }


# -- errors -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def case_study_error(exc: ImagegenError) -> ErrorAnswer:
    """`{"error": message, "code": ...}` as the original functions answered (400 for credits)."""
    status = 400 if isinstance(exc, InsufficientCredits) else exc.status
    body = {**error_details(exc), "error": exc.message, "code": exc.code}
    return ErrorAnswer(status, body, error_headers(exc))


def error_details(exc: ImagegenError) -> dict[str, Any]:
    details = dict(exc.details)
    problems = details.pop("problems", None)
    if isinstance(problems, list):
        details["errors"] = [_problem_field(p) for p in problems]
    return details


def _problem_field(p: Problem) -> dict[str, Any]:
    field: dict[str, Any] = {"field": p.field, "message": p.message}
    if p.allowed:
        field["allowed"] = list(p.allowed)
    return field


def error_headers(exc: ImagegenError) -> dict[str, str]:
    if isinstance(exc, TooManyRequests):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": 'Bearer realm="imagegen"'}
    return {}
