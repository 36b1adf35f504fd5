"""/v1/generations: create (202, or the finished resource with `Prefer: wait=N`), get, list, cancel."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from imagegen import metrics, service
from imagegen.api.auth import Principal, PrincipalDep, RuntimeDep, creating_principal
from imagegen.api.common import (
    create_and_enqueue,
    image_url,
    json_body,
    page_size,
    wait_until_done,
)
from imagegen.api.errors import documented
from imagegen.api.idempotency import idempotent
from imagegen.clock import utcnow
from imagegen.domain.generation import GenerationRequest, to_resource
from imagegen.domain.validation import bounded_int
from imagegen.runtime import Runtime

router = APIRouter(prefix="/v1/generations", tags=["generations"], responses=documented(401, 403, 413, 422))
MAX_WAIT = 60
PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait(?:=([0-9]+))?(?:$|[;,\s])")
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", description="Retry-safe: same key and body → same result")
]


class GenerationIn(BaseModel):
    """The body of a create. Unknown fields are ignored; cost and status are never the client's."""

    userId: str | None = Field(None, description="Defaults to the key's own user", examples=["testUser1"])  # noqa: N815
    model: str = Field(examples=["model-a"])
    style: str = Field(examples=["anime"])
    color: str = Field(examples=["vibrant"])
    size: str = Field(examples=["512x512"])
    prompt: str = Field("", examples=["A cat sitting on a futuristic throne"])
    webhook: str | None = Field(None, description="POSTed signed events for this generation")
    webhookEvents: list[str] | None = Field(None, description="start, completed (default: completed)")  # noqa: N815


class Generation(BaseModel):
    id: str
    userId: str  # noqa: N815
    model: str
    style: str
    color: str
    size: str
    prompt: str
    cost: int
    status: str = Field(description="pending, running, completed, failed or canceled")
    imageUrl: str | None  # noqa: N815
    error: str | None
    createdAt: str  # noqa: N815
    startedAt: str | None  # noqa: N815
    completedAt: str | None  # noqa: N815
    webhook: str | None
    webhookEvents: list[str]  # noqa: N815
    progress: float = Field(
        description="0 to 1: as the engine reports it while running (at most once a second); 1 once completed"
    )


class GenerationPage(BaseModel):
    items: list[Generation]
    nextCursor: str | None  # noqa: N815


def resource(request: Request, runtime: Runtime, generation: GenerationRequest) -> dict[str, Any]:
    body = to_resource(generation)
    body["imageUrl"] = image_url(request, runtime, generation.image_url)
    return body


def prefer_wait(prefer: str | None) -> int:
    """Seconds to wait from `Prefer: wait=N` (RFC 7240); a bare `wait` means the maximum, 60."""
    if not prefer:
        return 0
    match = PREFER_WAIT.search(prefer)
    if match is None:
        return 0
    seconds = match.group(1)
    # Any number above the maximum (of however many digits) waits the maximum.
    wait = None if seconds is None else bounded_int(seconds.lstrip("0") or "0", 0, MAX_WAIT)
    return MAX_WAIT if wait is None else wait


@router.post(
    "",
    status_code=202,
    response_model=Generation,
    summary="Create a generation (debits its cost at once)",
    responses={
        200: {"model": Generation, "description": "Finished within `Prefer: wait`"},
        **documented(402, 404, 409, 429),
    },
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": GenerationIn.model_json_schema()}}},
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 255},
                "description": "Retry-safe: same key and body → same result",
            },
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "wait=N: answer when done, up to N ≤ 60 s",
            },
        ],
    },
)
async def create_generation(request: Request) -> JSONResponse:
    # The busiest route reads its headers itself: each FastAPI parameter costs time on every request.
    runtime: Runtime = request.app.state.runtime
    principal = await creating_principal(request, runtime)
    idempotency_key = request.headers.get("idempotency-key")
    prefer = request.headers.get("prefer")
    body = await json_body(request)
    if isinstance(body, dict) and body.get("userId") is None and principal.user_id is not None:
        body = {**body, "userId": principal.user_id}
    wait = prefer_wait(prefer)

    async def run() -> JSONResponse:
        created = await create_and_enqueue(runtime, principal, body, idempotency_key)
        current = await wait_until_done(runtime, created, wait) if wait else created
        headers = {"Location": f"/v1/generations/{created.id}"}
        if wait:
            headers["Preference-Applied"] = f"wait={wait}"
        status = 200 if current.status.terminal else 202
        return JSONResponse(resource(request, runtime, current), status_code=status, headers=headers)

    return await idempotent(request, runtime, principal, idempotency_key, body, run)


@router.get(
    "/{generation_id}", response_model=Generation, summary="One generation", responses=documented(404)
)
async def get_generation(
    generation_id: str, request: Request, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    generation = await _owned(runtime, principal, generation_id)
    return resource(request, runtime, generation)


@router.get("", response_model=GenerationPage, summary="A user's generations, newest first")
async def list_generations(
    request: Request,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    userId: str | None = None,  # noqa: N803
    status: Annotated[str | None, Query(description="pending, running, completed, failed, canceled")] = None,
    limit: str | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    user_id = userId or principal.user_id  # an admin without userId sees everyone's
    if user_id is not None:
        principal.may_act_for(user_id)
    page = await service.list_generations(
        runtime.storage,
        user_id,
        status,
        limit=page_size(limit, runtime),
        cursor=cursor or None,
    )
    return {"items": [resource(request, runtime, g) for g in page.items], "nextCursor": page.next_cursor}


@router.post(
    "/{generation_id}/cancel",
    response_model=Generation,
    summary="Cancel a pending generation (refunded once)",
    responses=documented(404, 409),
)
async def cancel_generation(
    generation_id: str,
    request: Request,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    async def run() -> JSONResponse:
        await _owned(runtime, principal, generation_id)
        canceled = await service.cancel_generation(runtime.storage, generation_id, utcnow())
        metrics.generation_finished(canceled.model, "canceled", refunded=canceled.cost)
        return JSONResponse(resource(request, runtime, canceled))

    return await idempotent(request, runtime, principal, idempotency_key, {"cancel": generation_id}, run)


async def _owned(runtime: Runtime, principal: Principal, generation_id: str) -> GenerationRequest:
    generation = await service.get_generation(runtime.storage, generation_id)
    principal.may_act_for(generation.user_id)
    return generation
