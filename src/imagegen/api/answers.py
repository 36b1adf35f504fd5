"""Every answer body an HTTP edge sends for an error, and the case-study routes' own bodies, in one
place, framework-free: the FastAPI handlers, the body-limits middleware and the Cloud Functions
render through these functions, so the deployments cannot answer differently.

/v1 and admin routes answer RFC 9457 problem details (`application/problem+json`) with a stable
`code`; the case-study routes answer `{"error": message, "code": ...}` as the original functions
did (an insufficient balance is a 400 there, a 402 on /v1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagegen import request_id
from imagegen.api.inputs import absolute_url
from imagegen.domain.errors import ImagegenError, InsufficientCredits, TooManyRequests, Unauthenticated
from imagegen.domain.generation import GenerationRequest, Status, iso
from imagegen.domain.ledger import LedgerEntry
from imagegen.domain.paging import Page
from imagegen.domain.users import User
from imagegen.domain.validation import Problem

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
FAILED_MESSAGE = "AI generation failed, credits refunded."
INTERNAL_ERROR = "An internal error occurred; nothing you sent caused it"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Insufficient credits",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Request body too large",
    422: "Invalid request",
    429: "Too many requests",
    431: "Request header fields too large",
    500: "Internal error",
    503: "Service unavailable",
}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = JSON


# -- errors -----------------------------------------------------------------------------------------
def problem(status: int, code: str, detail: str, extra: dict[str, Any] | None = None) -> Answer:
    # Details never overwrite the RFC 9457 members.
    body = {
        **(extra or {}),
        "type": f"https://imagegen.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    return Answer(status, _with_request_id(body), media_type=PROBLEM_JSON)


def _with_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """Every error body names the request it answers (request_id.py), so a client's report of
    an error finds its log lines."""
    rid = request_id.get()
    if rid is not None:
        body["requestId"] = rid
    return body


def refusal(status: int, code: str, detail: str, *, case_study: bool) -> Answer:
    """An answer with a code and a message alone, in the route's style."""
    if case_study:
        return Answer(status, _with_request_id({"error": detail, "code": code}))
    return problem(status, code, detail)


def error(exc: ImagegenError, *, case_study: bool) -> Answer:
    """One of imagegen's errors, in the route's style."""
    return case_study_error(exc) if case_study else v1_error(exc)


def v1_error(exc: ImagegenError) -> Answer:
    # A request the catalog rejects is a 422 on /v1; the case-study routes keep their 400.
    status = 422 if exc.code == "validation_error" else exc.status
    answer = problem(status, exc.code, exc.message, error_details(exc))
    return Answer(answer.status, answer.body, error_headers(exc), PROBLEM_JSON)


def case_study_error(exc: ImagegenError) -> Answer:
    """`{"error": message, "code": ...}` as the original functions answered (400 for credits)."""
    status = 400 if isinstance(exc, InsufficientCredits) else exc.status
    body = {**error_details(exc), "error": exc.message, "code": exc.code}
    return Answer(status, _with_request_id(body), error_headers(exc))


def validation_error(errors: list[dict[str, Any]], *, case_study: bool) -> Answer:
    """A body or parameter of the wrong shape: each `{"field", "message"}` listed."""
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    if case_study:
        return Answer(400, _with_request_id({"error": detail, "code": "validation_error", "errors": errors}))
    return problem(422, "validation_error", detail, {"errors": errors})


def http_error(status: int, detail: str, *, case_study: bool) -> Answer:
    """The framework's own refusals: no such route, a method the route does not take."""
    return refusal(status, HTTP_CODES.get(status, "http_error"), detail, case_study=case_study)


def method_not_allowed() -> Answer:
    return http_error(405, "Method Not Allowed", case_study=True)


def unexpected(*, case_study: bool = False) -> Answer:
    """A bug of ours: nothing about it is shown, and the connection is closed after it."""
    if case_study:
        return Answer(500, _with_request_id({"error": INTERNAL_ERROR, "code": "internal_error"}))
    answer = problem(500, "internal_error", INTERNAL_ERROR)
    # The server closes the connection after an unexpected error: say so, so that no client
    # sends its next request on a connection about to close.
    return Answer(500, answer.body, {"connection": "close"}, PROBLEM_JSON)


def error_details(exc: ImagegenError) -> dict[str, Any]:
    details = dict(exc.details)
    problems = details.pop("problems", None)
    if isinstance(problems, list):
        details["errors"] = [_problem_field(p) for p in problems]
    return details


def _problem_field(p: Problem) -> dict[str, Any]:
    found: dict[str, Any] = {"field": p.field, "message": p.message}
    if p.allowed:
        found["allowed"] = list(p.allowed)
    return found


def error_headers(exc: ImagegenError) -> dict[str, str]:
    if isinstance(exc, TooManyRequests):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": 'Bearer realm="imagegen"'}
    return {}


# -- the case-study routes' answers ------------------------------------------------------------------
def generation_answer(done: GenerationRequest, base_url: str) -> Answer:
    """createGenerationRequest's status and body: 200 done, 500 failed (refunded), 202 still going."""
    body: dict[str, Any] = {
        "generationRequestId": done.id,
        "deductedCredits": done.cost,
        "imageUrl": absolute_url(base_url, done.image_url),
        "status": done.status.value,
    }
    if done.status is Status.FAILED:
        return Answer(500, _with_request_id({"error": FAILED_MESSAGE, "reason": done.error, **body}))
    return Answer(200 if done.status.terminal else 202, body)


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
