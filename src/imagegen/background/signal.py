"""Wakes idle workers when a job is enqueued (in this process, or by another's NOTIFY).

It counts signals rather than keeping a backlog of them: a worker notes the count before it looks
for a job and, finding none, sleeps unless a job was signalled meanwhile. Under load, thousands of
signals arrive while every worker is busy; kept as a backlog, they had idle workers claim back to
back, finding nothing, for seconds after the queue had drained.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class JobSignal:
    """Lives on the event loop: `enqueued` and `wake_all` are called there (see background.listener)."""

    def __init__(self) -> None:
        self._count = 0
        self._sleepers: deque[asyncio.Future[None]] = deque()

    @property
    def count(self) -> int:
        """Signals so far: note it before looking for a job, and give it to `wait`."""
        return self._count

    def enqueued(self) -> None:
        """Wakes one sleeping worker."""
        self._count += 1
        while self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                return

    def wake_all(self) -> None:
        self._count += 1
        while self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)

    async def wait(self, seen: int, timeout: float) -> None:
        """Sleeps up to `timeout`, unless a job was signalled since the count was `seen`."""
        if self._count != seen:
            return
        sleeper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append(sleeper)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await sleeper
        finally:
            if not sleeper.done():
                sleeper.cancel()
            with contextlib.suppress(ValueError):
                self._sleepers.remove(sleeper)
