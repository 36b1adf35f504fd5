"""The catalog and the API keys one process has seen, kept for the create path (every adapter).

A create would otherwise read both on every request (the catalog is several reads). Nothing here is
trusted blindly: the cache carries the configuration version it was read under, the debit checks
that version inside its own transaction, and admin edits and key revocations change it (in any
process). A create priced or authorized from a stale copy is therefore refused before it writes
anything, and redone with fresh values: edits stay effective on the very next request.

It lives on the event loop: its reads are awaited and its state changes between them, so it needs
no lock.
"""

from __future__ import annotations

from typing import Protocol

from imagegen.domain.catalog import Catalog
from imagegen.domain.keys import ApiKey

MAX_KEYS = 100_000  # past this many distinct keys, start over rather than grow without bound


class ConfigSource(Protocol):
    """What the cache reads: the ports' CatalogStore and Keys, as far as it uses them."""

    async def config_snapshot(self) -> tuple[str, Catalog]: ...
    async def config_version(self) -> str: ...
    async def find_api_key(self, key_hash: str) -> ApiKey | None: ...


class ConfigCache:
    def __init__(self, storage: ConfigSource) -> None:
        self._storage = storage
        self._snapshot: tuple[str, Catalog] | None = None
        self._keys: dict[str, ApiKey] = {}

    def snapshot(self) -> tuple[str, Catalog] | None:
        """The cached (version, catalog), or None when it must be read (`refresh`)."""
        return self._snapshot

    async def current(self) -> tuple[str, Catalog]:
        """The cached (version, catalog), read first if there is none."""
        return self._snapshot or await self.refresh()

    async def refresh(self) -> tuple[str, Catalog]:
        """Reads the version and the catalog again and forgets every key (they may be revoked)."""
        snapshot = await self._storage.config_snapshot()
        if self._snapshot is None or self._snapshot[0] != snapshot[0]:
            self._keys.clear()
        self._snapshot = snapshot
        return snapshot

    def invalidate(self) -> None:
        self._snapshot = None
        self._keys.clear()

    def key(self, key_hash: str) -> ApiKey | None:
        return self._keys.get(key_hash)

    async def lookup(self, key_hash: str) -> ApiKey | None:
        """Reads a key and keeps it if the cache is still at the version read before it.

        The version is read first: a key revoked after that read changes the version, which the
        debit then sees; a key kept under an older version than the cache's would escape that check.
        """
        if self._snapshot is None:
            await self.refresh()
        version = await self._storage.config_version()
        key = await self._storage.find_api_key(key_hash)
        if key is not None and self._snapshot is not None and self._snapshot[0] == version:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            self._keys[key_hash] = key
        return key

    async def principal_key(self, key_hash: str) -> ApiKey | None:
        """The key from the cache, else read (and kept, see `lookup`)."""
        return self._keys.get(key_hash) or await self.lookup(key_hash)
