"""API keys: bearer tokens stored as hashes; a key acts for one user, or for all (an admin key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: str | None  # None: an admin key
    created_at: datetime
    revoked_at: datetime | None = None
    # When a request last used it, recorded at most once a minute per key and process (see
    # service/key_uses.py): accurate to that minute, and never in the create's own transaction.
    last_used_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.user_id is None
