"""The one place imagegen reads the wall clock (UTC, timezone-aware)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
