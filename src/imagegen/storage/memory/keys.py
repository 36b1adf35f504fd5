"""API keys in memory, kept as hashes; revoking one changes the configuration version (parts.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from imagegen.domain.keys import ApiKey
from imagegen.storage.memory.parts import MemoryParts
from imagegen.storage.memory.state import KeyRow


class MemoryKeys(MemoryParts):
    async def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
        key = ApiKey(key_id, user_id, now)
        with self._lock:
            self._state.keys[key_id] = KeyRow(key, key_hash)
        return key

    async def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        with self._lock:
            stored = self._state.keys.get(key_id)
            if stored is None or stored.key.revoked_at is not None:
                return False
            stored.key = replace(stored.key, revoked_at=now)
            self._config_version += 1
            return True

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        with self._lock:
            for stored in self._state.keys.values():
                if stored.key_hash == key_hash and stored.key.revoked_at is None:
                    return stored.key
        return None

    async def list_api_keys(self, user_id: str | None) -> list[ApiKey]:
        with self._lock:
            keys = [row.key for row in self._state.keys.values()]
        chosen = [k for k in keys if user_id is None or k.user_id == user_id]
        return sorted(chosen, key=lambda k: (k.created_at, k.id))

    async def record_key_uses(self, used: dict[str, datetime]) -> None:
        with self._lock:  # not a configuration change: the version stays as it is
            for key_id, at in used.items():
                stored = self._state.keys.get(key_id)
                if stored is not None and (stored.key.last_used_at is None or stored.key.last_used_at < at):
                    stored.key = replace(stored.key, last_used_at=at)
