"""Concurrency slots shared by every process: a deployment's `concurrency` held in storage
(`ports.EngineSlots`), so that two worker processes bound to one GPU box send it no more than
`concurrency` generations at once between them.

The router takes a slot on the engine's thread; the storage is awaited on the event loop, so the
thread hands each call to the loop and waits for it. A slot is leased for the attempt's time left
plus a margin: a process that dies holding one frees it when the lease runs out. A cancel or the
deadline ends the wait for a free slot, as with the in-process slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from imagegen.clock import utcnow
from imagegen.domain.ids import new_id
from imagegen.engines.run import Run
from imagegen.engines.slots import Slots
from imagegen.ports import EngineSlots

T = TypeVar("T")
POLL_S = 0.2  # a process waiting for a slot held elsewhere looks again this often
MARGIN_S = 5.0  # a slot's lease outlasts its attempt's deadline by this
CALL_TIMEOUT_S = 30.0


class SharedSlots(Slots):
    def __init__(self, storage: EngineSlots, owner: str) -> None:
        super().__init__()
        self._storage = storage
        self._owner = owner
        self._local: set[str] = set()  # deployments limited per process only (the unbound stand-in)
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the first generation started

    def per_process(self, key: str) -> None:
        """Keeps `key`'s slots in this process (no storage round trip)."""
        self._local.add(key)

    @contextmanager
    def slot(self, key: str, limit: int, run: Run) -> Iterator[bool]:
        if key in self._local or self.loop is None:
            with super().slot(key, limit, run) as got:
                yield got
            return
        holder = f"{self._owner}/{new_id(8)}"
        got = self._take(key, limit, run, holder)
        try:
            yield got
        finally:
            if got:
                self._call(self._storage.release_slot(key, holder))

    def _take(self, key: str, limit: int, run: Run, holder: str) -> bool:
        while not (run.canceled or run.expired):
            now = utcnow()
            until = now + timedelta(seconds=run.remaining() + MARGIN_S)
            if self._call(self._storage.take_slot(key, limit, holder, until, now)):
                return True
            run.wait(POLL_S)
        return False

    def _call(self, call: Coroutine[Any, Any, T]) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(CALL_TIMEOUT_S)
