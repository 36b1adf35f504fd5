"""Idempotency-Key on POSTs that create generations or move credits (Stripe's model).

The first request with a key runs and its response (status, body, Location) is kept for
`IMAGEGEN_IDEMPOTENCY_RETENTION_HOURS` (24 by default); the same key with the same request replays
that response; with a different request it is a 409. A duplicate that arrives while the first is
still running waits for it (up to 10 s) and then replays. Server errors are not kept, so a retry
runs again. The effect itself is also keyed where it is written (the generation request or ledger
entry carries the key), so even a process that dies between the effect and recording the response
cannot cause a second debit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from imagegen import service
from imagegen.api.auth import Principal
from imagegen.api.errors import v1_error
from imagegen.clock import utcnow
from imagegen.domain.errors import ImagegenError, RequestInProgress
from imagegen.domain.idempotency import StoredResponse
from imagegen.runtime import Runtime

MAX_KEY_LENGTH = 255
WAIT_FOR_FIRST = 10.0
LOCK = timedelta(seconds=60)
KEPT_HEADERS = ("location", "preference-applied", "cache-control")
NOT_KEPT = {429, 409}  # transient answers: a retry should run again


async def idempotent(
    request: Request,
    runtime: Runtime,
    principal: Principal,
    key: str | None,
    body: Any,
    run: Callable[[], Awaitable[JSONResponse]],
) -> JSONResponse:
    if key is None:
        return await run()
    service.check_idempotency_key(key)
    scope = principal.user_id or "admin"
    print_ = service.fingerprint({"method": request.method, "path": request.url.path, "body": body})
    replay = await _begin(runtime, scope, key, print_)
    if replay is not None:
        return replay
    try:
        response = await run()
    except ImagegenError as exc:
        if exc.status >= 500 or exc.status in NOT_KEPT:
            await runtime.storage.release_idempotent(scope, key)
            raise
        response = v1_error(exc)
    except BaseException:
        await runtime.storage.release_idempotent(scope, key)
        raise
    await _finish(runtime, scope, key, response)
    return response


async def _begin(runtime: Runtime, scope: str, key: str, fingerprint: str) -> JSONResponse | None:
    deadline = time.monotonic() + WAIT_FOR_FIRST
    while True:
        now = utcnow()
        state = await runtime.storage.begin_idempotent(scope, key, fingerprint, now, now + LOCK)
        if state.state == "new":
            return None
        if state.state == "replay" and state.response is not None:
            stored = state.response
            headers = {**stored.headers, "Idempotent-Replayed": "true"}
            media = "application/problem+json" if stored.status >= 400 else "application/json"
            return JSONResponse(stored.body, status_code=stored.status, headers=headers, media_type=media)
        if time.monotonic() > deadline:
            raise RequestInProgress("A request with this Idempotency-Key is still in progress; retry later")
        await asyncio.sleep(0.05)


async def _finish(runtime: Runtime, scope: str, key: str, response: JSONResponse) -> None:
    if response.status_code >= 500 or response.status_code in NOT_KEPT:
        await runtime.storage.release_idempotent(scope, key)
        return
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    stored = StoredResponse(response.status_code, json.loads(bytes(response.body)), headers)
    await runtime.storage.finish_idempotent(scope, key, stored)
