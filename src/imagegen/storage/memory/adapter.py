"""An in-memory storage adapter: the whole contract of `imagegen.ports.Storage`, in one process.

For tests of the service layer without a database: nothing survives the process. Every method runs
directly on the caller's event loop (nothing in it waits) and holds one lock for its whole run, so
each is atomic and isolated as a transaction is on the other adapters, even when several threads'
event loops share one storage (a test client's server thread beside the test's own loop).

This class is made of one part per port concern (catalog.py, credits.py, generations.py and
jobs.py with the refunds.py they share, keys.py, idempotency.py, outbox.py, reports.py, schedule.py),
all over the state and lock of parts.py, as the SQL and Firestore adapters are; it adds what
concerns the storage as a whole: its lifecycle, the initial data, the audit, export and import.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Any

from imagegen.domain.audit import Violation
from imagegen.domain.catalog import Catalog
from imagegen.domain.keys import ApiKey
from imagegen.storage.memory.audit import violations
from imagegen.storage.memory.catalog import MemoryCatalog
from imagegen.storage.memory.credits import MemoryCredits
from imagegen.storage.memory.generations import MemoryGenerations
from imagegen.storage.memory.idempotency import MemoryIdempotency
from imagegen.storage.memory.jobs import MemoryJobs
from imagegen.storage.memory.keys import MemoryKeys
from imagegen.storage.memory.outbox import MemoryOutbox
from imagegen.storage.memory.reports import MemoryReports
from imagegen.storage.memory.schedule import MemorySchedule
from imagegen.storage.memory.slots import MemorySlots
from imagegen.storage.memory.state import KeyRow, OptionRow
from imagegen.storage.memory.transfer import Import, export_records

INITIAL_DATA_MARKER = "initial_data_loaded"


class MemoryStorage(
    MemoryCatalog,
    MemoryCredits,
    MemoryGenerations,
    MemoryJobs,
    MemoryKeys,
    MemoryIdempotency,
    MemoryOutbox,
    MemoryReports,
    MemorySchedule,
    MemorySlots,
):
    # -- lifecycle --------------------------------------------------------------------------
    async def migrate(self) -> None:
        """Nothing to create: the state is born with its collections."""

    async def load_initial_data(
        self,
        catalog: Catalog,
        users: dict[str, int],
        keys: list[tuple[str, str, str | None]],
        now: datetime,
    ) -> bool:
        with self._lock:
            s = self._state
            if INITIAL_DATA_MARKER in s.meta:
                return False
            s.models.update(catalog.models)
            for kind, names in (("styles", catalog.styles), ("colors", catalog.colors)):
                s.options[kind].update({name: OptionRow(True) for name in names})
            s.options["sizes"].update({name: OptionRow(True, cost) for name, cost in catalog.sizes.items()})
            for user_id, credits in users.items():
                self._insert_user(user_id, credits, now, "initial data", entry_id=f"initial-{user_id}")
            for key_id, key_hash, key_user in keys:
                s.keys[key_id] = KeyRow(ApiKey(key_id, key_user, now), key_hash)
            s.meta[INITIAL_DATA_MARKER] = now.isoformat()
            return True

    async def ping(self) -> None:
        """Always there."""

    async def listen(self, on_job: Callable[[], None], on_done: Callable[[str], None]) -> None:
        """No other process shares this storage: there is nothing to hear (returns at once)."""

    async def close(self) -> None:
        """Nothing to release."""

    # -- audit, import and export -----------------------------------------------------------
    async def violations(self) -> list[Violation]:
        with self._lock:
            return list(violations(self._state))

    async def export_records(self) -> AsyncIterator[dict[str, Any]]:
        with self._lock:
            records = list(export_records(self._state))
        for record in records:
            yield record

    async def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
        with self._lock:
            draft = copy.deepcopy(self._state)
            counts = Import(draft, now).run(records)
            self._state = draft  # every line went in: keep it all
            if counts["models"]:
                self._config_version += 1  # a catalog edit, as put_model
            return counts
