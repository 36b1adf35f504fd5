"""Idempotency-Key answers in memory, kept for replay (see api/idempotency.py): one per scope and key.

The first request with a key holds it until it finishes (or its lock runs out, when a request that
died mid-way is taken over); a second one meanwhile is told the key is busy.
"""

from __future__ import annotations

from datetime import datetime

from imagegen.domain.errors import IdempotencyConflict
from imagegen.domain.idempotency import Idempotency, StoredResponse
from imagegen.storage.memory.parts import MemoryParts
from imagegen.storage.memory.state import IdempotencyRow


class MemoryIdempotency(MemoryParts):
    async def begin_idempotent(
        self, scope: str, key: str, fingerprint: str, now: datetime, lock_until: datetime
    ) -> Idempotency:
        with self._lock:
            stored = self._state.idempotency.get((scope, key))
            if stored is None:
                self._state.idempotency[(scope, key)] = IdempotencyRow(fingerprint, now, lock_until)
                return Idempotency("new")
            if stored.fingerprint != fingerprint:
                raise IdempotencyConflict(
                    "Idempotency-Key was already used with a different request", idempotencyKey=key
                )
            if stored.response is not None:
                return Idempotency("replay", stored.response)
            if stored.locked_until is not None and stored.locked_until > now:
                return Idempotency("busy")
            stored.locked_until = lock_until  # the first attempt died mid-request: take over
            return Idempotency("new")

    async def finish_idempotent(self, scope: str, key: str, response: StoredResponse) -> None:
        with self._lock:
            stored = self._state.idempotency.get((scope, key))
            if stored is not None:
                stored.response, stored.locked_until = response, None

    async def release_idempotent(self, scope: str, key: str) -> None:
        with self._lock:
            stored = self._state.idempotency.get((scope, key))
            if stored is not None and stored.response is None:
                del self._state.idempotency[(scope, key)]

    async def purge_idempotency(self, created_before: datetime) -> int:
        with self._lock:
            old = [k for k, stored in self._state.idempotency.items() if stored.created_at < created_before]
            for k in old:
                del self._state.idempotency[k]
            return len(old)
