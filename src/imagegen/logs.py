"""The process's logging: text or JSON lines on stderr, each with its request's id, none with a secret.

`IMAGEGEN_LOG_FORMAT=text|json`, `IMAGEGEN_LOG_LEVEL`. Every line carries the id of the request
being served (request_id.py; `-` for background work). A job's end is one INFO line with its ids
and duration (background/jobs.py), passed as `extra={"fields": {...}}`: JSON lines carry them as
members. imagegen never logs a key, an Authorization header or the webhook secret; as a second
guard, every line is scrubbed of anything shaped like one before it is written (a key `ig_...`, a
`whsec_...` secret, a bearer credential), whoever logged it (a library, an exception's text).

Configured once per process by the composition roots (the CLI, `create_app` in each API process);
uvicorn is handed no logging configuration of its own, so its lines take the same format.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from imagegen import request_id

SECRET = re.compile(
    r"(ig_[A-Za-z0-9_-]{16,})|(whsec_[A-Za-z0-9+/=_-]{8,})|((?i:bearer)\s+[^\s\"',;]+)", re.ASCII
)
REDACTED = "[redacted]"
QUIET = {"httpx": logging.WARNING, "httpcore": logging.WARNING}  # httpx logs whole URLs at INFO
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")
_HANDLER_NAME = "imagegen"


def scrub(text: str) -> str:
    return SECRET.sub(REDACTED, text) if ("ig_" in text or "whsec_" in text or "earer" in text) else text


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which of the API processes
        }
        if getattr(record, "request_id", "-") != "-":
            line["requestId"] = record.request_id  # type: ignore[attr-defined]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(line, ensure_ascii=False, default=str))


def configure(log_format: str, level: str) -> None:
    """Replaces imagegen's handler on the root logger (the other handlers stay: pytest's, say)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_RequestId())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
    for name in UVICORN:  # through the root's handler, in the same format
        uvicorn = logging.getLogger(name)
        uvicorn.handlers.clear()
        # uvicorn's access lines are replaced by imagegen's own (IMAGEGEN_ACCESS_LOG), which carry
        # the request id and the route.
        uvicorn.propagate = name != "uvicorn.access"
