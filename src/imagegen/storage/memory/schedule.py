"""Scheduled runs in memory: each scheduled period is claimed once, by one owner, and marked
finished; a claim left unfinished past `stale_before` (its claimer died) may be taken over.
"""

from __future__ import annotations

from datetime import datetime

from imagegen.storage.memory.parts import MemoryParts
from imagegen.storage.memory.state import RunRow


class MemorySchedule(MemoryParts):
    async def claim_scheduled_run(
        self, period_id: str, owner: str, now: datetime, stale_before: datetime
    ) -> bool:
        with self._lock:
            run = self._state.runs.get(period_id)
            if run is not None and (run.finished_at is not None or run.claimed_at >= stale_before):
                return False
            self._state.runs[period_id] = RunRow(owner, now)  # new, or taken over from a dead claimer
            return True

    async def finish_scheduled_run(self, period_id: str, now: datetime) -> None:
        with self._lock:
            run = self._state.runs.get(period_id)
            if run is not None:
                run.finished_at = now

    async def last_scheduled_run(self) -> str | None:
        with self._lock:
            finished = [period for period, run in self._state.runs.items() if run.finished_at is not None]
            return max(finished, default=None)
