"""Engine slots in memory: a deployment's numbered slots, each held by one holder until its lease
runs out (see ports.EngineSlots)."""

from __future__ import annotations

from datetime import datetime

from imagegen.storage.memory.parts import MemoryParts


class MemorySlots(MemoryParts):
    async def take_slot(self, key: str, limit: int, holder: str, until: datetime, now: datetime) -> bool:
        with self._lock:
            for slot in range(limit):
                held = self._state.slots.get((key, slot))
                if held is None or held[1] <= now:
                    self._state.slots[(key, slot)] = (holder, until)
                    return True
            return False

    async def release_slot(self, key: str, holder: str) -> None:
        with self._lock:
            for slot, held in list(self._state.slots.items()):
                if slot[0] == key and held[0] == holder:
                    del self._state.slots[slot]
