"""A small HTTP server on a real socket for the protocol servers: each test server is a function
from an Exchange (what the client sent) to a Reply (status, headers, body, and how slowly).

http.server rather than an ASGI app: a handler thread per connection makes "answer after 3 s",
"send the body a byte at a time" and "block until interrupted" plain code.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before anything is sent
    drip: float = 0.0  # between 1 kB pieces of the body

    @classmethod
    def json(cls, value: Any, status: int = 200, **options: Any) -> Reply:
        headers = {"content-type": "application/json", **options.pop("headers", {})}
        return cls(status, json.dumps(value).encode(), headers, **options)


Handle = Callable[[Exchange], Reply]


class ProtocolServer:
    def __init__(self, handle: Handle) -> None:
        self.handle = handle
        self.exchanges: list[Exchange] = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                size = int(self.headers.get("content-length") or 0)
                exchange = Exchange(
                    self.command,
                    url.path,
                    dict(parse_qsl(url.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(size),
                )
                server.exchanges.append(exchange)
                reply = server.handle(exchange)
                if reply.delay and server.stopping.wait(reply.delay):
                    return
                # The client may give up: that is what the slow replies are for.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(reply)

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                if not reply.drip:
                    self.wfile.write(reply.body)
                    return
                for start in range(0, len(reply.body), 1024):
                    self.wfile.write(reply.body[start : start + 1024])
                    self.wfile.flush()
                    if server.stopping.wait(reply.drip):
                        return

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.02,), daemon=True, name="protocol-server"
        )

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def paths(self, method: str | None = None) -> list[str]:
        return [e.path for e in self.exchanges if method is None or e.method == method]

    def __enter__(self) -> ProtocolServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)


def closed_port() -> str:
    """A loopback URL nothing listens on: connecting to it is refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
