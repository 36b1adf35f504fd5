"""The one lifecycle of a process's background work: named asyncio tasks, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("imagegen.background")
STOP_TIMEOUT = 10.0  # seconds a stop waits for the tasks to end once they are canceled


class Tasks:
    """Starts coroutines as named tasks on the running loop; `stop` cancels them and waits.

    A task that ends by an exception is logged with its name: background work that stopped should
    be seen, not lost in an unread task.
    """

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, name: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)
        return task

    @property
    def names(self) -> list[str]:
        return [task.get_name() for task in self._tasks if not task.done()]

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Cancels every task, the last started first, and waits up to `timeout` for them all."""
        tasks, self._tasks = self._tasks, []
        for task in reversed(tasks):
            task.cancel()
        if not tasks:
            return
        # asyncio.wait, not gather under a timeout: a gather canceled by the timeout would still wait
        # for a task that ignores its cancel.
        _, late = await asyncio.wait(tasks, timeout=timeout)
        if late:
            names = ", ".join(task.get_name() for task in late)
            log.error("background tasks still running %.0f s after stop: %s", timeout, names)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=error)
