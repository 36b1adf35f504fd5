"""imagegen's HTTP/1.1 connections: uvicorn's httptools protocol with the limits a public server needs.

uvicorn's httptools protocol (the fast one, which `serve` uses) caps neither the size nor the count
of request headers (a 50 MB header was read in full), and no timer runs until a request's headers
are complete (3,000 half-sent requests were held for minutes). This protocol refuses headers past
`IMAGEGEN_MAX_HEADER_BYTES` or `IMAGEGEN_MAX_HEADERS` with 431, and answers 408 to a connection
whose request headers are not complete `IMAGEGEN_HEADER_TIMEOUT_SECONDS` after it opened or after
the request began; both close the connection, saying so (`Connection: close`). Slow bodies are
timed out by the ASGI middleware (api/limits.py), where the body is read.

uvicorn builds one protocol per connection from its own Config, so the limits come from each
process's Settings (read once, at the first connection), like the app itself in every process.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from imagegen.api import answers
from imagegen.settings import Settings

PROTOCOL = "imagegen.serving:LimitedHttpToolsProtocol"  # what `serve` hands uvicorn (by name)


@dataclass(frozen=True)
class ProtocolLimits:
    max_header_bytes: int  # the request line and every header line together
    max_headers: int
    header_timeout: float  # seconds for a request's headers to arrive whole

    @classmethod
    def from_settings(cls, settings: Settings) -> ProtocolLimits:
        return cls(settings.max_header_bytes, settings.max_headers, settings.header_timeout_seconds)


_limits: ProtocolLimits | None = None


def process_limits() -> ProtocolLimits:
    global _limits
    if _limits is None:
        _limits = ProtocolLimits.from_settings(Settings())
    return _limits


class Refused(Exception):
    """Raised from a parser callback: httptools stops, and uvicorn answers through send_400_response."""


class HeaderWatch:
    """One timer per event loop for every connection's header deadline.

    A timer armed and cancelled for each request cost ~10 % of the no-op route's throughput; one
    sweep a second (or twice per timeout, if shorter) costs nothing per request, and a deadline is
    then met within that period.
    """

    _by_loop: dict[asyncio.AbstractEventLoop, HeaderWatch] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.loop = loop
        self.period = period
        self.connections: set[LimitedHttpToolsProtocol] = set()
        self.handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, timeout: float) -> HeaderWatch:
        watch = cls._by_loop.get(loop)
        if watch is None:
            watch = cls._by_loop[loop] = cls(loop, min(1.0, timeout / 2))
        return watch

    def add(self, protocol: LimitedHttpToolsProtocol) -> None:
        self.connections.add(protocol)
        if self.handle is None:
            self.handle = self.loop.call_later(self.period, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        for protocol in [p for p in self.connections if p.headers_overdue(now)]:
            protocol.headers_too_slow()
        self.handle = self.loop.call_later(self.period, self.sweep) if self.connections else None


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = process_limits()
        self._watch = HeaderWatch.of(self.loop, self.limits.header_timeout)
        self._refusal: tuple[int, str, str] | None = None
        self._header_deadline: float | None = None  # while a request's headers are awaited
        self._in_headers = True  # from the end of one request's body to the next one's headers
        self._unparsed_bytes = 0  # bytes received while its headers are incomplete (httptools buffers them)
        self._chunk = 0  # the size of what data_received is parsing
        self._message_ended = False

    # -- the header deadline ---------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._header_deadline = self.loop.time() + self.limits.header_timeout
        self._watch.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._watch.connections.discard(self)
        super().connection_lost(exc)

    def headers_overdue(self, now: float) -> bool:
        return self._header_deadline is not None and self._header_deadline <= now

    def headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._in_headers and not self.transport.is_closing():
            seconds = f"{self.limits.header_timeout:g}"
            self._refuse(408, "request_timeout", f"The request headers did not arrive within {seconds} s")

    # -- what a request's headers take -------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._message_ended = False
        self._chunk = len(data)
        super().data_received(data)
        if self._refusal is not None or not self._in_headers or self.transport.is_closing():
            return
        if not self._message_ended:  # all of `data` belongs to headers still incomplete
            self._unparsed_bytes += len(data)
        if self._unparsed_bytes > self.limits.max_header_bytes:
            self._refuse(431, "headers_too_large", self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        if self._header_deadline is None:
            self._header_deadline = self.loop.time() + self.limits.header_timeout

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_deadline = None
        if len(self.headers) > self.limits.max_headers:
            self._refusal = (431, "too_many_headers", f"More than {self.limits.max_headers} request headers")
            raise Refused
        # The bytes received so far bound the headers' size: count them exactly only when they
        # could be over (almost every request's headers arrive whole in one small packet).
        if self._unparsed_bytes + self._chunk > self.limits.max_header_bytes and self._header_size() > (
            self.limits.max_header_bytes
        ):
            self._refusal = (431, "headers_too_large", self._too_large())
            raise Refused
        super().on_headers_complete()

    def _header_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers, self._message_ended = True, True
        self._unparsed_bytes = 0

    def _too_large(self) -> str:
        return f"The request line and headers are larger than {self.limits.max_header_bytes} bytes"

    # -- refusing ------------------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        status, code, detail = self._refusal
        self._write_refusal(status, code, detail)

    def _refuse(self, status: int, code: str, detail: str) -> None:
        self._refusal = (status, code, detail)
        self._write_refusal(status, code, detail)

    def _write_refusal(self, status: int, code: str, detail: str) -> None:
        self._header_deadline = None
        answer = answers.problem(status, code, detail)
        body = json.dumps(answer.body).encode()
        head = [
            STATUS_LINE[status],
            b"content-type: " + answer.media_type.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
