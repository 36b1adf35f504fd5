"""Each request's id, its metrics and its access-log line, as one plain ASGI middleware.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which runs the app in a task of its own and
wraps every body in a stream: on the create route, the hot path, what this adds per request is a
header lookup, a context variable set and reset, a clock read at each end, one header appended to
the answer and the metrics' two updates (metrics.py).

The id is the client's `X-Request-ID` when sane (request_id.py), else a new one; it is echoed in
the answer's `X-Request-ID`, put on every log line of the request (logs.py) and in every error
body (api/answers.py). Metrics label a request by its route's template (`/v1/generations/{id}`,
never the path itself: one series per route, not per id), `unmatched` when no route took it.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen import request_id
from imagegen.metrics import HttpMetrics

log = logging.getLogger("imagegen.access")
REQUEST_ID = b"x-request-id"
UNMATCHED = "unmatched"


class Observe:
    def __init__(
        self, app: ASGIApp, *, request_ids: bool = True, metrics: bool = True, access_log: bool = False
    ) -> None:
        self.app = app
        self.request_ids = request_ids
        self.metrics = HttpMetrics() if metrics else None
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts its answer
        if self.request_ids:
            rid = request_id.from_client(_header(scope, REQUEST_ID))
            token = request_id.current.set(rid)
            echoed = (REQUEST_ID, rid.encode())

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), echoed]
                await send(message)

        else:

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The id stays set: the server's 500 body (answers.unexpected) carries it; uvicorn runs
            # each request in a task of its own, so it goes no further.
            self._done(scope, status, time.perf_counter() - start)
            raise
        self._done(scope, status, time.perf_counter() - start)
        if self.request_ids:
            request_id.current.reset(token)

    def _done(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or scope.get("root_path") or UNMATCHED
        if self.metrics is not None:
            self.metrics.observe(template, scope["method"], status, seconds)
        if self.access_log:
            fields = {"method": scope["method"], "path": scope["path"], "route": template, "status": status}
            fields["durationMs"] = round(seconds * 1000, 2)
            log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                extra={"fields": fields},
            )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
