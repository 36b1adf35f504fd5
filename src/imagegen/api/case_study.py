"""The case study's three functions, compatible with the original emulator URLs.

Served at `/<name>` and `/<project>/<region>/<name>`. createGenerationRequest answers once the image is
done (or failed and refunded), as the original did.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from imagegen import service
from imagegen.api import answers
from imagegen.api.auth import CreatingPrincipalDep, PrincipalDep, RuntimeDep
from imagegen.api.common import base_url, create_and_enqueue, json_body, page_size, wait_until_done
from imagegen.api.errors import DESCRIPTIONS, respond
from imagegen.api.inputs import principal_for
from imagegen.clock import utcnow
from imagegen.domain.errors import InvalidInput
from imagegen.domain.generation import GenerationRequest
from imagegen.runtime import Runtime

router = APIRouter(tags=["case study"])


def _both_paths(name: str) -> list[str]:
    return [f"/{name}", f"/{{project}}/{{region}}/{name}"]


async def create_generation_request(
    request: Request,
    runtime: RuntimeDep,
    principal: CreatingPrincipalDep,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
) -> JSONResponse:
    body = await json_body(request)
    created = await create_and_enqueue(runtime, principal, body, idempotency_key)
    done = await wait_until_done(runtime, created, runtime.settings.wait_timeout_seconds)
    return _generation_response(request, runtime, done)


def _generation_response(request: Request, runtime: RuntimeDep, done: GenerationRequest) -> JSONResponse:
    return respond(answers.generation_answer(done, base_url(request, runtime)))


async def get_user_credits(
    request: Request,
    userId: str | None = None,  # noqa: N803 - the case study's parameter name
    limit: str | None = None,
    cursor: str | None = None,
) -> JSONResponse:
    # The answer rendered straight to JSON: this route is read far more often than anything is written.
    runtime: Runtime = request.app.state.runtime
    principal = await principal_for(runtime.storage, runtime.settings, request.headers.get("authorization"))
    runtime.key_uses.seen(principal.key_id)
    if not userId:
        raise InvalidInput("Missing required query parameter: userId")
    service.check_user_id(userId)
    principal.may_act_for(userId)
    size = page_size(limit, runtime)
    user, page = await service.get_credits(runtime.storage, userId, limit=size, cursor=cursor or None)
    return JSONResponse(answers.credits_answer(user, page))


async def schedule_weekly_report(
    runtime: RuntimeDep, principal: PrincipalDep, week: str | None = None
) -> dict[str, Any]:
    principal.require_admin()
    now = utcnow()
    period = service.parse_period(week, now=now)
    return await service.run_report(runtime.storage, period, now)


ANSWER = {
    "type": "object",
    "required": ["generationRequestId", "deductedCredits", "imageUrl", "status"],
    "properties": {
        "generationRequestId": {"type": "string"},
        "deductedCredits": {"type": "integer"},
        "imageUrl": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["pending", "running", "completed", "failed", "canceled"]},
    },
}
CREATE_BODY = {
    "type": "object",
    "required": ["userId", "model", "style", "color", "size"],
    "properties": {
        name: {"type": "string"} for name in ("userId", "model", "style", "color", "size", "prompt")
    },
}
CREDITS = {
    "type": "object",
    "required": ["currentCredits", "transactions", "nextCursor"],
    "properties": {
        "currentCredits": {"type": "integer"},
        "transactions": {"type": "array", "items": {"type": "object"}},
        "nextCursor": {"type": ["string", "null"]},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json(ANSWER, "The image is done"),
    202: _json(ANSWER, "Still going after IMAGEGEN_WAIT_TIMEOUT_SECONDS: poll /v1/generations/{id}"),
    500: {"description": "AI generation failed, credits refunded (the request is stored as failed)"},
    **{status: {"description": DESCRIPTIONS[status]} for status in (400, 403, 404, 409, 429)},
}
for path in _both_paths("createGenerationRequest"):
    router.add_api_route(
        path,
        create_generation_request,
        methods=["POST"],
        summary="Create a generation and wait for it",
        responses=CREATE_RESPONSES,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": CREATE_BODY}}}
        },
    )
for path in _both_paths("getUserCredits"):
    router.add_api_route(
        path,
        get_user_credits,
        methods=["GET"],
        summary="A user's balance and ledger",
        responses={
            200: _json(CREDITS, "Balance and ledger, newest first"),
            404: {"description": "User not found"},
        },
    )
for path in _both_paths("scheduleWeeklyReport"):
    for method in ("GET", "POST"):  # one route each: an operation id each
        router.add_api_route(path, schedule_weekly_report, methods=[method], summary="Run the weekly report")
