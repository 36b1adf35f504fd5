"""What every part of the in-memory adapter shares: the state, its lock, the configuration version,
and the writes several parts make beside a state change (a ledger entry, a webhook delivery).

The adapter (adapter.py) is one class made of one part per port concern (credits.py, catalog.py,
generations.py ...), as the SQL and Firestore adapters are. Every part's method runs directly on
the caller's event loop (nothing in it waits) and holds the lock for its whole run, so each is
atomic and isolated as a transaction is on the other adapters. The lock is a thread lock because
several threads' event loops may share one storage (a test client's server thread beside the
test's own loop); it is reentrant so that a helper may take it again under its caller.
"""

from __future__ import annotations

import threading
from datetime import datetime

from imagegen.domain.errors import UserNotFound
from imagegen.domain.generation import GenerationRequest
from imagegen.domain.ids import new_id
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.domain.webhooks import delivery_of
from imagegen.storage.memory.state import DeliveryRow, State, UserRow


class MemoryParts:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state = State()
        # The configuration version: bumped by every catalog or model edit and key revocation, so
        # that a create priced from a cached catalog is refused (StaleConfig) as on the other adapters.
        self._config_version = 1

    # -- helpers (each runs under the caller's lock) ----------------------------------------
    def _user(self, user_id: str) -> UserRow:
        user = self._state.users.get(user_id)
        if user is None:
            raise UserNotFound(user_id)
        return user

    def _append(
        self,
        user: UserRow,
        entry_type: EntryType,
        delta: int,
        request_id: str | None,
        reason: str | None,
        now: datetime,
        *,
        idempotency_key: str | None = None,
        entry_id: str | None = None,
    ) -> LedgerEntry:
        """Records a move whose effect is already on `user` (its balance after is the user's now)."""
        entry_id = entry_id or new_id()
        entry = LedgerEntry(entry_id, user.id, entry_type, delta, user.credits, request_id, reason, now)
        self._state.append(user, entry, idempotency_key)
        return entry

    def _enqueue_webhook(self, request: GenerationRequest, event: str, now: datetime) -> None:
        """Adds the webhook outbox delivery under the same lock as the state change it reports."""
        delivery = delivery_of(request, event, now)
        if delivery is not None:
            self._state.deliveries[delivery.id] = DeliveryRow(delivery, next_attempt_at=now)
