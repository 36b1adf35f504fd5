"""Lets an HTTP handler wait for a generation to finish without holding a thread.

Workers in this process, and other processes' NOTIFYs (PostgreSQL), call `finished(id)`. The ids
finished last are remembered, so a waiter that registers after its job ended (with zero model
latency, a worker can finish before the create's answer is even built) is woken at once instead of
having to read the database first. A waiter also re-reads at an interval: a process that cannot be
heard (SQLite has no NOTIFY) may finish the job.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, defaultdict

# More than the jobs a deployment finishes while a create is being answered; an id that has been
# forgotten costs its waiter one timed re-read, not a wrong answer.
REMEMBERED = 4096


class Completions:
    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._lock = threading.Lock()
        self._waiters: defaultdict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = (
            defaultdict(list)
        )
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered

    def register(self, request_id: str) -> asyncio.Future[None]:
        """A future that is done once `request_id` has finished (already done if it just has)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if request_id in self._recent:
                future.set_result(None)
            else:
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
            self._recent[request_id] = None
            if len(self._recent) > self._remembered:
                self._recent.popitem(last=False)
            waiters = self._waiters.pop(request_id, [])
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
