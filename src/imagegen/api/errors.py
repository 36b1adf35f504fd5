"""One place that turns imagegen's errors into HTTP responses.

/v1 and admin routes answer RFC 9457 problem details with a stable `code`; the case-study routes answer
`{"error": message}` as the original functions did (see `case_study_error`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegen import http
from imagegen.domain.errors import ImagegenError

log = logging.getLogger("imagegen.api")
PROBLEM_JSON = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Insufficient credits",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class ProblemDetail(BaseModel):
    """RFC 9457 problem details, as every /v1 error is answered."""

    type: str = Field(examples=["https://imagegen.dev/problems/insufficient_credits"])
    title: str = Field(examples=["Insufficient credits"])
    status: int = Field(examples=[402])
    detail: str = Field(examples=["Insufficient credits"])
    code: str = Field(description="Stable, for programs to branch on", examples=["insufficient_credits"])
    errors: list[dict[str, Any]] | None = Field(
        None, description="422 only: each bad field, with allowed values"
    )


DESCRIPTIONS = {
    400: "Invalid input; the message (and `errors`) say what",
    401: "No API key, or an unknown or revoked one",
    402: "Insufficient credits",
    403: "The key may not act on this user, or the route needs an admin key",
    404: "No such resource",
    409: "Conflicts with the current state or a reused Idempotency-Key",
    413: "Request body too large",
    422: "Invalid input; `errors` lists each bad field",
    429: "Over the user's rate or in-flight limit (see Retry-After)",
    503: "The database is unavailable; retry",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses, all problem+json."""
    return {
        status: {
            "model": ProblemDetail,
            "description": DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}},
        }
        for status in statuses
    }


def problem(status: int, code: str, detail: str, extra: dict[str, Any] | None = None) -> JSONResponse:
    # Details never overwrite the RFC 9457 members.
    body = {
        **(extra or {}),
        "type": f"https://imagegen.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def v1_error(exc: ImagegenError) -> JSONResponse:
    # A request the catalog rejects is a 422 on /v1; the case-study routes keep their 400.
    status = 422 if exc.code == "validation_error" else exc.status
    return _with_headers(problem(status, exc.code, exc.message, http.error_details(exc)), exc)


def case_study_error(exc: ImagegenError) -> JSONResponse:
    answer = http.case_study_error(exc)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def _with_headers(response: JSONResponse, exc: ImagegenError) -> JSONResponse:
    response.headers.update(http.error_headers(exc))
    return response


def is_case_study(request: Request) -> bool:
    return not request.url.path.startswith("/v1")


def install(app: FastAPI) -> None:
    @app.exception_handler(ImagegenError)
    async def _imagegen_error(request: Request, exc: ImagegenError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return case_study_error(exc) if is_case_study(request) else v1_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or "body", "message": e["msg"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        if is_case_study(request):
            return JSONResponse(
                {"error": detail, "code": "validation_error", "errors": errors}, status_code=400
            )
        return problem(422, "validation_error", detail, {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        if is_case_study(request):
            return JSONResponse({"error": str(exc.detail), "code": code}, status_code=exc.status_code)
        return problem(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        response = problem(500, "internal_error", "An internal error occurred; nothing you sent caused it")
        # The server closes the connection after an unexpected error: say so, so that no client
        # sends its next request on a connection about to close.
        response.headers["connection"] = "close"
        return response
