"""Helpers the routers share: reading a JSON body, paging parameters, image URLs, waiting for a job."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from imagegen import http, service
from imagegen.api.auth import Principal
from imagegen.clock import utcnow
from imagegen.config_cache import ConfigCache
from imagegen.domain.errors import InvalidInput, ReaderBusy, StaleConfig, StorageUnavailable, Unauthenticated
from imagegen.domain.generation import GenerationRequest
from imagegen.ports import GroupCommitted, ReadsOnLoop
from imagegen.runtime import Runtime

STALE_ATTEMPTS = 5


async def json_body(request: Request) -> Any:
    return http.parse_json(await request.body())


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


T = TypeVar("T")


async def read_only(runtime: Runtime, work: Callable[[], T]) -> T:
    """Runs `work`, which only reads, on the event loop where the storage allows it (SQLite: no
    thread hand-offs), else (or should the database not be readable at once) on a thread."""
    storage = runtime.storage
    if isinstance(storage, ReadsOnLoop) and storage.reads_on_loop:
        try:
            with storage.reading_on_loop():
                return work()
        except ReaderBusy:
            pass
    return await run_in_threadpool(work)


def page_size(value: str | None, runtime: Runtime) -> int:
    return http.page_size(value, runtime.settings)


def base_url(request: Request, runtime: Runtime) -> str:
    return runtime.settings.public_url or str(request.base_url)


def image_url(request: Request, runtime: Runtime, path: str | None) -> str | None:
    if path is None:  # no image yet: spare building the base URL (most creates answer before one)
        return None
    return http.absolute_url(base_url(request, runtime), path)


def create_guard(runtime: Runtime, principal: Principal) -> Callable[[str], None]:
    return http.create_guard(runtime.limiter, principal)


async def create_and_enqueue(
    runtime: Runtime, principal: Principal, body: Any, idempotency_key: str | None
) -> GenerationRequest:
    """Validates, authorizes, debits and queues a create (or replays its key), then wakes a worker."""
    if runtime.config is None:
        created, fresh = await run_in_threadpool(
            functools.partial(
                service.create_generation,
                runtime.storage,
                body,
                **_create_options(runtime, principal, idempotency_key),
            )
        )
    else:
        created, fresh = await _create_from_cache(runtime, runtime.config, principal, body, idempotency_key)
    if fresh:
        runtime.signal.enqueued()
    return created


async def _create_from_cache(
    runtime: Runtime, config: ConfigCache, principal: Principal, body: Any, idempotency_key: str | None
) -> tuple[GenerationRequest, bool]:
    """The create path without a thread of its own: priced from the cached catalog, in the event loop,
    then debited by the storage's group-committing writer. A debit refused because the catalog or
    the keys changed since the cache was read is redone with fresh ones (and the key checked again).
    """
    storage = cast(GroupCommitted, runtime.storage)  # runtime.config exists only for such a storage
    for _ in range(STALE_ATTEMPTS):
        snapshot = config.snapshot()
        if snapshot is None:
            snapshot = await run_in_threadpool(config.refresh)
        version, catalog = snapshot
        options = _create_options(runtime, principal, idempotency_key)
        try:
            new = service.prepare_generation(catalog, body, **options)
        except InvalidInput:
            # Refused by the cached catalog: an option added or enabled since would only show in a
            # fresh one, so look before refusing (a rare path: one small read).
            if await run_in_threadpool(storage.config_version) == version:
                raise
            await run_in_threadpool(config.refresh)
            continue
        try:
            return await storage.debit_from_loop(new, version)
        except StaleConfig:
            await run_in_threadpool(config.refresh)
            if (
                principal.key_hash is not None
                and await run_in_threadpool(config.lookup, principal.key_hash) is None
            ):
                raise Unauthenticated("Unknown or revoked API key") from None
    raise StorageUnavailable("the catalog kept changing during this create; try again")


def _create_options(runtime: Runtime, principal: Principal, idempotency_key: str | None) -> dict[str, Any]:
    settings = runtime.settings
    return {
        "max_prompt_length": settings.max_prompt_length,
        "now": utcnow(),
        "idempotency_key": idempotency_key,
        "authorize": create_guard(runtime, principal),
        "allow_private_webhooks": settings.webhook_allow_private,
        "max_in_flight": settings.max_in_flight_per_user,
    }


async def wait_until_done(runtime: Runtime, created: GenerationRequest, timeout: float) -> GenerationRequest:
    """Returns the request once it is terminal, or as it stands when `timeout` runs out.

    Starts from the request as the create returned it and reads it again only when a worker says
    the job ended (or at the re-read interval), on the event loop where the storage allows it.
    """
    request_id = created.id
    deadline = time.monotonic() + timeout
    current = created
    while not service.is_terminal(current):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        future = runtime.completions.register(request_id)
        try:
            # In-process workers and other processes' NOTIFYs wake us at once; the timed re-read
            # covers a process that cannot be heard (SQLite has no NOTIFY).
            recheck = min(remaining, max(runtime.settings.poll_interval_seconds, 0.05) * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), recheck)
        finally:
            runtime.completions.unregister(request_id, future)
        current = await read_only(
            runtime, functools.partial(service.get_generation, runtime.storage, request_id)
        )
    return current
