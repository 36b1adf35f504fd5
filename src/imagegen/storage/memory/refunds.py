"""A request ended in memory (completed, failed, canceled), and the one refund of a failed or
canceled one: shared by generations.py (cancel) and jobs.py (complete, fail).

The request's change, the refund, the user's balance and the webhook delivery are made under the
caller's lock, after the caller checked the move is allowed, so a second refund cannot follow.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from imagegen.domain.generation import Move
from imagegen.domain.ledger import EntryType
from imagegen.storage.memory.parts import MemoryParts
from imagegen.storage.memory.state import RequestRow


class MemoryRefunds(MemoryParts):
    def _finish(self, stored: RequestRow, move: Move, now: datetime, **changes: Any) -> None:
        stored.request = replace(stored.request, status=move.target, completed_at=now, **changes)
        stored.lease_owner = stored.lease_expires_at = None

    def _refund(self, stored: RequestRow, move: Move, error: str, now: datetime) -> None:
        self._finish(stored, move, now, error=error)
        request = stored.request
        user = self._state.users[request.user_id]
        user.credits += request.cost
        user.in_flight -= 1
        self._append(user, EntryType.REFUND, request.cost, request.id, error, now)
        self._enqueue_webhook(request, "completed", now)
