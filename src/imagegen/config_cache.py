"""The catalog and the API keys one process has seen, kept for the create path.

A create would otherwise read both on every request (the catalog is four queries). Nothing here is
trusted blindly: the cache carries the configuration version it was read under, the debit checks
that version inside its own transaction, and admin edits and key revocations change it (in any
process). A create priced or authorized from a stale copy is therefore refused before it writes
anything, and redone with fresh values: edits stay effective on the very next request.
"""

from __future__ import annotations

import threading

from imagegen.domain.catalog import Catalog
from imagegen.domain.keys import ApiKey
from imagegen.ports import ConfigSource

MAX_KEYS = 100_000  # past this many distinct keys, start over rather than grow without bound


class ConfigCache:
    def __init__(self, storage: ConfigSource) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        self._snapshot: tuple[str, Catalog] | None = None
        self._keys: dict[str, ApiKey] = {}

    def snapshot(self) -> tuple[str, Catalog] | None:
        """The cached (version, catalog), or None when it must be read (`refresh`, blocking)."""
        return self._snapshot

    def refresh(self) -> tuple[str, Catalog]:
        """Reads the version and the catalog again and forgets every key (they may be revoked)."""
        snapshot = self._storage.config_snapshot()
        with self._lock:
            if self._snapshot is None or self._snapshot[0] != snapshot[0]:
                self._keys.clear()
            self._snapshot = snapshot
        return snapshot

    def invalidate(self) -> None:
        with self._lock:
            self._snapshot = None
            self._keys.clear()

    def key(self, key_hash: str) -> ApiKey | None:
        return self._keys.get(key_hash)

    def lookup(self, key_hash: str) -> ApiKey | None:
        """Reads a key (blocking) and keeps it if the cache is still at the version read before it.

        The version is read first: a key revoked after that read changes the version, which the
        debit then sees; a key kept under an older version than the cache's would escape that check.
        """
        if self._snapshot is None:
            self.refresh()
        version = self._storage.config_version()
        key = self._storage.find_api_key(key_hash)
        with self._lock:
            if key is not None and self._snapshot is not None and self._snapshot[0] == version:
                if len(self._keys) >= MAX_KEYS:
                    self._keys.clear()
                self._keys[key_hash] = key
        return key
