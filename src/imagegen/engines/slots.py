"""In-process concurrency limits, one per deployment: a GPU box that runs one image at a time is
sent one at a time by this process. Workers share them across processes through storage
(background/slots.py `SharedSlots`, which keeps this interface)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from imagegen.engines.run import Run

# How often a waiter looks at its run: a cancel or the deadline is noticed within this long.
CHECK_EVERY_S = 0.05


class Slots:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy: dict[str, int] = {}

    def busy(self, key: str) -> int:
        with self._changed:
            return self._busy.get(key, 0)

    @contextmanager
    def slot(self, key: str, limit: int, run: Run) -> Iterator[bool]:
        """Holds one of `limit` slots while the block runs; yields False (holding none) if the run
        was canceled or ran out of time while it waited."""
        got = self._acquire(key, limit, run)
        try:
            yield got
        finally:
            if got:
                self._release(key)

    def _acquire(self, key: str, limit: int, run: Run) -> bool:
        with self._changed:
            while self._busy.get(key, 0) >= limit:
                if run.canceled or run.expired:
                    return False
                self._changed.wait(min(CHECK_EVERY_S, run.remaining()))
            self._busy[key] = self._busy.get(key, 0) + 1
            return True

    def _release(self, key: str) -> None:
        with self._changed:
            self._busy[key] -= 1
            self._changed.notify_all()
