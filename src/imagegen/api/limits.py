"""The request body's limits as plain ASGI middleware: its size (413) and the time it may take (408).

The size is refused before the body is read into memory; the time runs from the request's headers,
so a body sent a byte at a time cannot hold a connection. A response that goes out before the
request's body was read whole (a refusal, a 401 before an admin body is read) says
`Connection: close`: the rest of the body is not worth reading, and the client knows not to reuse
the connection.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen.api import answers


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


CLOSE = (b"connection", b"close")


class RequestLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, 413, "body_too_large", self._too_large())
            return
        body = _Body(declared not in (None, b"0") or b"transfer-encoding" in headers)
        timer = (
            asyncio.get_running_loop().call_later(self.body_timeout, body.too_slow) if body.expected else None
        )

        async def limited_receive() -> Message:
            if not body.expected:
                return await receive()
            if body.timed_out:
                raise BodyTooSlow
            body.waiter = asyncio.current_task()
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not body.timed_out:
                    raise
                body.waiter.uncancel()  # type: ignore[union-attr]
                raise BodyTooSlow from None
            finally:
                body.waiter = None
            body.received += len(message.get("body", b""))
            if body.received > self.max_bytes:
                raise BodyTooLarge
            if not message.get("more_body", False) or message["type"] != "http.request":
                body.complete()
                if timer is not None:
                    timer.cancel()
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                body.responded = True
                if body.expected:  # answered before the body was read whole: close after
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not body.responded:
                await self._refuse(scope, send, 413, "body_too_large", self._too_large())
        except BodyTooSlow:
            if not body.responded:
                detail = f"The request body did not arrive within {self.body_timeout:g} s"
                await self._refuse(scope, send, 408, "request_timeout", detail)
        finally:
            if timer is not None:
                timer.cancel()

    def _too_large(self) -> str:
        return f"Request body is larger than the limit of {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, detail: str) -> None:
        answer = answers.refusal(status, code, detail, case_study=not scope["path"].startswith("/v1"))
        payload = json.dumps(answer.body).encode()
        headers = [
            (b"content-type", answer.media_type.encode()),
            (b"content-length", str(len(payload)).encode()),
            CLOSE,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class _Body:
    """What is known of one request's body while the app runs."""

    def __init__(self, expected: bool) -> None:
        self.expected = expected  # some of it has still to be received
        self.received = 0
        self.waiter: asyncio.Task[Any] | None = None  # the task waiting in receive(), if one is
        self.responded = False
        self.timed_out = False

    def complete(self) -> None:
        self.expected = False

    def too_slow(self) -> None:
        self.timed_out = True
        if self.waiter is not None:  # only ever interrupts a wait for the body
            self.waiter.cancel()
