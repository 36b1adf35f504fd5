"""Lets a request handler wait for a generation to finish: told by workers and other processes.

Workers in this process, and other processes' NOTIFYs (PostgreSQL) through the listener, call
`finished(id)` on the event loop. The ids finished last are remembered, so a waiter that comes after
its job ended (with zero model latency, a worker can finish before the create's answer is even
built) returns at once instead of reading the database first. A waiter also gives up after its
timeout and re-reads: a process that cannot be heard (SQLite has no NOTIFY) may finish the job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, defaultdict

# More than the jobs a deployment finishes while a create is being answered; an id that has been
# forgotten costs its waiter one timed re-read, not a wrong answer.
REMEMBERED = 4096


class Completions:
    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._waiters: defaultdict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered

    async def wait(self, request_id: str, timeout: float) -> bool:
        """Until `request_id` has finished (True, at once if it just has) or `timeout` is over."""
        if request_id in self._recent:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[request_id].append(future)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await future
        finally:
            waiters = self._waiters.get(request_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(request_id, None)
        return future.done() and not future.cancelled()

    def finished(self, request_id: str) -> None:
        self._recent[request_id] = None
        if len(self._recent) > self._remembered:
            self._recent.popitem(last=False)
        for future in self._waiters.pop(request_id, []):
            if not future.done():
                future.set_result(None)
