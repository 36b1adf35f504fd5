"""Helpers the routers share: reading a JSON body, paging parameters, image URLs, waiting for a job."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from imagegen import http, service
from imagegen.api.auth import Principal
from imagegen.clock import utcnow
from imagegen.domain.generation import GenerationRequest
from imagegen.runtime import Runtime


async def json_body(request: Request) -> Any:
    return http.parse_json(await request.body())


def page_size(value: str | None, runtime: Runtime) -> int:
    return http.page_size(value, runtime.settings)


def base_url(request: Request, runtime: Runtime) -> str:
    return runtime.settings.public_url or str(request.base_url)


def image_url(request: Request, runtime: Runtime, path: str | None) -> str | None:
    return http.absolute_url(base_url(request, runtime), path)


def create_guard(runtime: Runtime, principal: Principal) -> Callable[[str], None]:
    return http.create_guard(runtime.limiter, principal)


async def create_and_enqueue(
    runtime: Runtime, principal: Principal, body: Any, idempotency_key: str | None
) -> GenerationRequest:
    """Validates, authorizes, debits and queues a create (or replays its key), then wakes a worker."""
    created, fresh = await run_in_threadpool(
        functools.partial(
            service.create_generation,
            runtime.storage,
            body,
            max_prompt_length=runtime.settings.max_prompt_length,
            now=utcnow(),
            idempotency_key=idempotency_key,
            authorize=create_guard(runtime, principal),
            allow_private_webhooks=runtime.settings.webhook_allow_private,
            max_in_flight=runtime.settings.max_in_flight_per_user,
        )
    )
    if fresh:
        runtime.signal.enqueued()
    return created


async def wait_until_done(runtime: Runtime, request_id: str, timeout: float) -> GenerationRequest:
    """Returns the request once it is terminal, or as it stands when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        future = runtime.completions.register(request_id)
        try:
            current = await run_in_threadpool(service.get_generation, runtime.storage, request_id)
            remaining = deadline - time.monotonic()
            if service.is_terminal(current) or remaining <= 0:
                return current
            # In-process workers wake us at once; the re-read covers workers in other processes.
            recheck = min(remaining, max(runtime.settings.poll_interval_seconds, 0.05) * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), recheck)
        finally:
            runtime.completions.unregister(request_id, future)
