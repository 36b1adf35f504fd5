"""Pages of a list, newest first, and the cursors that continue them."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from imagegen.domain.errors import InvalidInput
from imagegen.domain.generation import valid_id

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


# Cursors are opaque to clients, and the same on every storage: a ledger page continues after an
# entry's sequence number, a list of requests or reports after an item's time and id.
MAX_SEQ = 2**63 - 1


def seq_cursor(seq: int) -> str:
    return str(seq)


def after_seq(cursor: str) -> int:
    """The sequence number a ledger page continues after (InvalidInput for anything else)."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 19 and int(cursor) <= MAX_SEQ):
        raise InvalidInput(f"Invalid cursor '{cursor[:80]}'")
    return int(cursor)


def time_cursor(at: datetime, last_id: str) -> str:
    """base64url of "<time>|<id>" of the last item on the page."""
    raw = f"{at.isoformat()}|{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def after_time(cursor: str) -> tuple[datetime, str]:
    """The (time, id) a page continues after (InvalidInput for anything else)."""
    try:
        if len(cursor) > MAX_TIME_CURSOR or not cursor.isascii():
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, separator, last_id = raw.partition("|")
        at = datetime.fromisoformat(at_text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Invalid cursor '{cursor[:80]}'") from exc
    if not separator or at.tzinfo is None or not valid_id(last_id):
        raise InvalidInput(f"Invalid cursor '{cursor[:80]}'")
    return at, last_id


MAX_TIME_CURSOR = 4 * (64 + 1 + 128) // 3 + 4  # base64 of an ISO time, "|" and an id
