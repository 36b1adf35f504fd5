"""Helpers the routers share: reading a JSON body, paging parameters, image URLs, waiting for a job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from imagegen import service
from imagegen.api.auth import Principal
from imagegen.domain.generation import GenerationRequest
from imagegen.errors import InvalidInput
from imagegen.runtime import Runtime

LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Request body must be a JSON object (not valid JSON: {exc})") from exc
    except RecursionError as exc:
        raise InvalidInput("Request body is nested too deeply") from exc
    if LONE_SURROGATE.search(raw):  # rare: escaped surrogates, which may not be valid pairs
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise InvalidInput("Request body contains invalid Unicode (an unpaired surrogate)") from exc
    return body


def page_size(value: str | None, runtime: Runtime) -> int:
    settings = runtime.settings
    if value is None or value == "":
        return settings.default_page_size
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= settings.max_page_size:
        raise InvalidInput(f"limit must be an integer from 1 to {settings.max_page_size}")
    return int(value)


def image_url(request: Request, runtime: Runtime, path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    base = runtime.settings.public_url or str(request.base_url)
    return base.rstrip("/") + path


def create_guard(runtime: Runtime, principal: Principal) -> Callable[[str], None]:
    """Runs once a create is valid and before it is written: the key's right to act, then the rate."""

    def guard(user_id: str) -> None:
        principal.may_act_for(user_id)
        runtime.limiter.take(user_id)

    return guard


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
