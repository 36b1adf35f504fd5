"""Idempotency-Key answers: the first answer to a key is kept and replayed to its retries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class Idempotency:
    """What to do with a request carrying an Idempotency-Key: run it, replay, or wait (in flight)."""

    state: str  # "new" | "replay" | "busy"
    response: StoredResponse | None = None
