"""Lets an HTTP handler wait for a generation to finish without holding a thread.

Workers in this process call `finished(id)`; a waiter also re-reads the database at an interval, since
in scale-out another process's worker may finish the job.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict


class Completions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: defaultdict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = (
            defaultdict(list)
        )

    def register(self, request_id: str) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiters[request_id].append((loop, future))
        return future

    def unregister(self, request_id: str, future: asyncio.Future[None]) -> None:
        with self._lock:
            waiters = self._waiters.get(request_id, [])
            waiters[:] = [(loop, f) for loop, f in waiters if f is not future]
            if not waiters:
                self._waiters.pop(request_id, None)

    def finished(self, request_id: str) -> None:
        with self._lock:
            waiters = self._waiters.pop(request_id, [])
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
