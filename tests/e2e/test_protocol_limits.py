"""HTTP/1.1 limits of the real `imagegen serve`, spoken over raw sockets.

The server runs with small limits (4 KiB of headers, 20 header lines, 1 s for headers and for a body)
so that each refusal shows quickly. After every answer the connection is either still usable (the
next request on it is answered) or the answer said `Connection: close` and the server closed it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import GENERATION, Server

LIMITS = {
    "IMAGEGEN_MAX_HEADER_BYTES": "4096",
    "IMAGEGEN_MAX_HEADERS": "20",
    "IMAGEGEN_HEADER_TIMEOUT_SECONDS": "1",
    "IMAGEGEN_BODY_TIMEOUT_SECONDS": "1",
    "IMAGEGEN_KEEP_ALIVE_SECONDS": "30",
}


SERVER_ENV = LIMITS  # the module's server (tests/e2e/conftest.py)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


class Connection:
    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the server; had {self.buffer!r}")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connection(server: Server) -> Iterator[Connection]:
    conn = Connection(server)
    yield conn
    conn.close()


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *headers: str, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    return ("\r\n".join([*lines, f"Content-Length: {size}"]) + "\r\n\r\n").encode() + body


def assert_still_usable(connection: Connection) -> None:
    connection.send(get("/healthz"))
    assert connection.answer().status == 200


def assert_refused_and_closed(answer: Answer, connection: Connection, status: int) -> None:
    assert answer.status == status, answer
    assert answer.closes, answer.headers
    assert connection.closed_by_server()


# -- header size and count ----------------------------------------------------------------------
def test_a_header_over_the_size_limit_is_a_431_and_the_connection_closes(connection: Connection) -> None:
    connection.send(get("/healthz", "X-Big: " + "a" * 8000))
    answer = connection.answer()
    assert_refused_and_closed(answer, connection, 431)
    assert json.loads(answer.body)["code"] == "headers_too_large"


def test_a_header_that_never_ends_is_refused_before_it_is_read_in_full(connection: Connection) -> None:
    connection.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Endless: ")
    sent = 0
    try:
        while sent < 20 * 1024 * 1024:  # 20 MiB, far more than the server may read
            connection.send(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 20 * 1024 * 1024, "the server read a 20 MiB header"
    try:
        answer = connection.answer()
    except (ConnectionError, OSError):
        return  # reset before the answer could be read: the server refused it all the same
    assert answer.status == 431


def test_more_header_lines_than_allowed_are_a_431(connection: Connection) -> None:
    connection.send(get("/healthz", *[f"X-H{i}: {i}" for i in range(25)]))
    answer = connection.answer()
    assert_refused_and_closed(answer, connection, 431)
    assert json.loads(answer.body)["code"] == "too_many_headers"


def test_headers_within_the_limits_are_served_on_a_kept_alive_connection(connection: Connection) -> None:
    for _ in range(3):
        connection.send(get("/healthz", *[f"X-H{i}: {'v' * 100}" for i in range(15)]))
        answer = connection.answer()
        assert answer.status == 200 and not answer.closes


# -- slow headers and bodies --------------------------------------------------------------------
def test_headers_that_do_not_arrive_in_time_are_a_408_and_the_connection_closes(
    connection: Connection,
) -> None:
    started = time.monotonic()
    connection.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # and never the blank line
    answer = connection.answer()
    assert 0.8 < time.monotonic() - started < 5
    assert_refused_and_closed(answer, connection, 408)


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(connection: Connection) -> None:
    started = time.monotonic()
    connection.sock.settimeout(10)
    try:
        data = connection.sock.recv(65536)
    except ConnectionResetError:
        data = b""
    assert 0.8 < time.monotonic() - started < 5
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_headers_sent_a_byte_at_a_time_still_time_out(connection: Connection) -> None:
    started = time.monotonic()
    request = get("/healthz", "X-Slow: " + "s" * 200)
    try:
        for byte in request[:-4]:
            connection.send(bytes([byte]))
            time.sleep(0.02)
            if time.monotonic() - started > 5:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = connection.answer()
    assert answer.status == 408 and time.monotonic() - started < 5


@pytest.mark.parametrize("dribble", [False, True], ids=["stalled", "a byte at a time"])
def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes(
    server: Server, connection: Connection, dribble: bool
) -> None:
    key = server.keys()["testUser1"]
    body = json.dumps(GENERATION).encode()
    started = time.monotonic()
    connection.send(post("/v1/generations", body[:10], f"Authorization: Bearer {key}", length=len(body)))
    if dribble:
        try:
            for byte in body[10:]:
                connection.send(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
    answer = connection.answer()
    assert answer.status == 408, answer
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.closes and time.monotonic() - started < 5


# -- keep-alive after errors ----------------------------------------------------------------------
def test_errors_after_a_whole_request_keep_the_connection_usable(
    server: Server, connection: Connection
) -> None:
    key = server.keys()["testUser1"]
    requests = [
        get("/nowhere"),  # 404
        get("/v1/users/testUser1"),  # 401
        get("/v1/users/testUser2", f"Authorization: Bearer {key}"),  # 403
        post("/createGenerationRequest", b'{"userId": ', f"Authorization: Bearer {key}"),  # 400
        post("/v1/generations", b'{"model": "x"}', f"Authorization: Bearer {key}"),  # 422
        get("/getUserCredits?userId=testUser1&limit=" + "9" * 3000, f"Authorization: Bearer {key}"),  # 400
    ]
    for request in requests:
        connection.send(request)
        answer = connection.answer()
        assert 400 <= answer.status < 500 and not answer.closes, answer
        assert_still_usable(connection)


def test_a_refusal_before_the_body_was_read_says_connection_close(
    server: Server, connection: Connection
) -> None:
    # The admin route checks the key before it reads the body: the body is left unread.
    body = json.dumps({"userId": "x" * 50, "credits": 1}).encode()
    connection.send(post("/v1/admin/users", body[:20], length=len(body)))
    assert_refused_and_closed(connection.answer(), connection, 401)


def test_a_body_declared_over_the_limit_is_a_413_and_the_connection_closes(
    server: Server, connection: Connection
) -> None:
    key = server.keys()["testUser1"]
    connection.send(post("/createGenerationRequest", b"{", f"Authorization: Bearer {key}", length=10**9))
    assert_refused_and_closed(connection.answer(), connection, 413)


def test_a_malformed_request_line_is_a_400_that_says_connection_close(connection: Connection) -> None:
    connection.send(b"NOT A REQUEST\r\n\r\n")
    assert_refused_and_closed(connection.answer(), connection, 400)
