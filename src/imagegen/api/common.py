"""Helpers the routers share: reading a JSON body, paging parameters, image URLs, the create and
the wait for it (both the service's, given this process's cache, limiter and completions)."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from imagegen import metrics, service
from imagegen.api import inputs
from imagegen.clock import utcnow
from imagegen.domain.generation import GenerationRequest
from imagegen.runtime import Runtime
from imagegen.service.keys import Principal


async def json_body(request: Request) -> Any:
    return inputs.parse_json(await request.body())


M = TypeVar("M", bound=BaseModel)


async def strict_body(request: Request, model: type[M]) -> M:
    """The body read as `model` with JSON's own types (true is not 1, "5" is not 5, times are ISO
    8601 strings). Routes call it once the caller is authorized, so that no key learns the shape of
    a body it may not send, and malformed JSON never answers before a missing key does."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route that reads its body with `strict_body`."""
    schema = {"schema": model.model_json_schema()}
    return {"requestBody": {"required": True, "content": {"application/json": schema}}}


def page_size(value: str | None, runtime: Runtime) -> int:
    return inputs.page_size(value, runtime.settings)


def base_url(request: Request, runtime: Runtime) -> str:
    return runtime.settings.public_url or str(request.base_url)


def image_url(request: Request, runtime: Runtime, path: str | None) -> str | None:
    if path is None:  # no image yet: spare building the base URL (most creates answer before one)
        return None
    return inputs.absolute_url(base_url(request, runtime), path)


async def create_and_enqueue(
    runtime: Runtime, principal: Principal, body: Any, idempotency_key: str | None
) -> GenerationRequest:
    """The service's create (or a replay of its key), then a wake-up for a worker."""
    settings = runtime.settings
    created, fresh = await service.create_generation(
        runtime.storage,
        body,
        inputs.create_rules(settings),
        now=utcnow(),
        idempotency_key=idempotency_key,
        authorize=inputs.create_guard(runtime.limiter, principal),
        config=runtime.config,
        key_hash=principal.key_hash,
    )
    if fresh:
        runtime.signal.enqueued()
        metrics.generation_created(created.model, created.cost)
    return created


async def wait_until_done(runtime: Runtime, created: GenerationRequest, timeout: float) -> GenerationRequest:
    """The service's wait, woken by this process's workers and other processes' NOTIFYs; the
    timed re-read covers a process that cannot be heard (SQLite has no NOTIFY)."""
    recheck = max(runtime.settings.poll_interval_seconds, 0.05) * 2
    return await service.wait_until_done(
        runtime.storage, created, timeout, recheck=recheck, completions=runtime.completions
    )
