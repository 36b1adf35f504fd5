"""The one lifecycle of the SQL adapter's own threads (the group-committing writer, the WAL
checkpointer): started by the first work that needs it, from any thread, once; joined on close.

Everything else a process runs in the background is an asyncio task (background/tasks.py); these
two are threads because their work is the synchronous driver's and must not wait on the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

JOIN_SECONDS = 10.0  # how long close waits for the thread to finish what it holds


class LazyThread:
    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._target = target
        self._name = name
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Starts the thread unless it runs already; safe to call from several threads at once."""
        if self._thread is None:
            with self._starting:
                if self._thread is None:
                    thread = threading.Thread(target=self._target, name=self._name, daemon=True)
                    thread.start()
                    self._thread = thread

    def join(self) -> None:
        """Waits for the thread to return (its target must have been told to stop)."""
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
