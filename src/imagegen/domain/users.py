"""A user: an id and a balance of credits (the ledger is in ledger.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class User:
    id: str
    credits: int
    created_at: datetime
