"""/metrics for a process that serves no HTTP API (`--role worker` or `scheduler`), on
`IMAGEGEN_METRICS_PORT`: the jobs it ran, its webhook deliveries, its storage errors, the queues.

A minimal HTTP/1.1 responder on the loop (one request per connection, headers capped at 16 KiB and
10 s), rather than a second web framework: Prometheus sends `GET /metrics` with an optional
`Authorization` header, and that is all it must understand. The scrape is authorized like the API's
(an admin key, or IMAGEGEN_METRICS_TOKEN).
"""

from __future__ import annotations

import asyncio
import logging

from imagegen import metrics
from imagegen.clock import utcnow
from imagegen.domain.errors import ImagegenError
from imagegen.service.scrape import ScrapeStorage, authorize_scrape, scrape
from imagegen.settings import Settings

log = logging.getLogger("imagegen.metrics")
MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0


async def serve_metrics(storage: ScrapeStorage, settings: Settings) -> None:
    """Serves until canceled."""
    assert settings.metrics_port is not None

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, media = await _respond(storage, settings, reader)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, body, media = 400, b"bad request\n", "text/plain"
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: {media}\r\n"
        head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, settings.host, settings.metrics_port, limit=MAX_HEAD)
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    async with server:
        await server.serve_forever()


async def _respond(
    storage: ScrapeStorage, settings: Settings, reader: asyncio.StreamReader
) -> tuple[int, bytes, str]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    if target.split("?", 1)[0] != "/metrics":
        return 404, b"not found\n", "text/plain"
    if method != "GET":
        return 405, b"method not allowed\n", "text/plain"
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    scheme, _, token = headers.get("authorization", "").partition(" ")
    try:
        await authorize_scrape(
            storage,
            token.strip() or None if scheme.lower() == "bearer" else None,
            metrics_token=settings.metrics_token,
            no_auth=settings.no_auth,
        )
    except ImagegenError as exc:
        return exc.status, f"{exc.message}\n".encode(), "text/plain"
    return 200, await scrape(storage, utcnow()), metrics.CONTENT_TYPE


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
_REASONS[405] = "Method Not Allowed"
_REASONS[503] = "Service Unavailable"
