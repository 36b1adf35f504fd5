"""The id of the request being served: the client's `X-Request-ID` if it is sane, else a new one.

It lives in a context variable set by the HTTP middleware (api/observe.py), so every log line of the
request (logs.py) and every error body (api/answers.py) carry it without being handed it; tasks a
request starts inherit it, background work has none.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

HEADER = "X-Request-ID"
MAX_LENGTH = 128
# Letters, digits and the punctuation ids and UUIDs use: nothing a log line or a header could
# misread (no space, quote, comma, control character).
SANE = re.compile(rb"[A-Za-z0-9._:@+=/-]{1,%d}" % MAX_LENGTH)

current: ContextVar[str | None] = ContextVar("imagegen_request_id", default=None)


def from_client(value: bytes | None) -> str:
    """The client's id when it is sane, else a new one (16 hex digits)."""
    if value is not None and SANE.fullmatch(value):
        return value.decode("ascii")
    return os.urandom(8).hex()


def get() -> str | None:
    return current.get()
