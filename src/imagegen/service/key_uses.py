"""The keys one process has seen used, written to storage in the background at most once per interval.

A key's last use is worth knowing (a key nobody uses can go) but not worth a write on every request:
the create route runs thousands of times a second. So a request only notes its key's id and the
monotonic time in a dict (no I/O, no allocation beyond the entry), and the process writes what it
noted once per interval (`IMAGEGEN_KEY_USE_INTERVAL_SECONDS`, 60 s by default) in one storage call,
and once more when it stops. A key's `lastUsedAt` is therefore up to one interval behind, and a
process that dies loses at most one interval's uses: it is an operator's hint, never a rule.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from imagegen.clock import utcnow
from imagegen.domain.errors import ImagegenError
from imagegen.ports import Keys

log = logging.getLogger("imagegen.keys")


class KeyUses:
    def __init__(self) -> None:
        self._seen: dict[str, float] = {}  # key id -> time.monotonic() of its latest use

    def seen(self, key_id: str | None) -> None:
        if key_id is not None:
            self._seen[key_id] = time.monotonic()

    def pending(self) -> dict[str, datetime]:
        """The noted uses as wall-clock times, forgotten here (`flush` writes them)."""
        seen, self._seen = self._seen, {}
        wall, mono = utcnow(), time.monotonic()
        return {key_id: wall - timedelta(seconds=mono - at) for key_id, at in seen.items()}

    async def flush(self, storage: Keys) -> None:
        used = self.pending()
        if not used:
            return
        try:
            await storage.record_key_uses(used)
        except ImagegenError as exc:  # the database is away: keep them for the next try
            log.warning("could not record %d keys' last use: %s", len(used), exc.message)
            self._keep(used)

    def _keep(self, used: dict[str, datetime]) -> None:
        wall, mono = utcnow(), time.monotonic()
        for key_id, at in used.items():
            self._seen.setdefault(key_id, mono - (wall - at).total_seconds())
