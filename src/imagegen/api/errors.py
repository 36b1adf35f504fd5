"""The FastAPI side of the error answers: the handlers that render every error through
api/answers.py, and the OpenAPI description of the problem details."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegen.api import answers
from imagegen.api.answers import PROBLEM_JSON
from imagegen.domain.errors import ImagegenError

log = logging.getLogger("imagegen.api")


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


def respond(answer: answers.Answer) -> JSONResponse:
    return JSONResponse(
        answer.body, status_code=answer.status, headers=answer.headers, media_type=answer.media_type
    )


def v1_error(exc: ImagegenError) -> JSONResponse:
    return respond(answers.v1_error(exc))


def is_case_study(request: Request) -> bool:
    return not request.url.path.startswith("/v1")


def install(app: FastAPI) -> None:
    @app.exception_handler(ImagegenError)
    async def _imagegen_error(request: Request, exc: ImagegenError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return respond(answers.error(exc, case_study=is_case_study(request)))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or "body", "message": e["msg"]}
            for e in exc.errors()
        ]
        return respond(answers.validation_error(errors, case_study=is_case_study(request)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        answer = answers.http_error(exc.status_code, str(exc.detail), case_study=is_case_study(request))
        return respond(answer)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return respond(answers.unexpected())
