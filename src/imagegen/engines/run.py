"""The run context: what the worker hands an engine for one generation.

A deadline, a cancel flag the engine checks while it waits, and a progress sink. It is the engine's
only tie to the job: engines never see storage, leases or threads beyond this.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]
Sleep = Callable[[float], object]


@dataclass
class _Shared:
    """What every attempt of one generation shares (see Run.within)."""

    clock: Clock
    sleep: Sleep | None
    on_progress: Callable[[float], None]
    canceled: threading.Event = field(default_factory=threading.Event)


class Run:
    """One generation's deadline, cancel flag and progress sink; safe to use from any thread.

    `clock` and `sleep` can be injected so that tests run a router's back-offs without waiting:
    with an injected `sleep`, `wait` calls it (a fake clock advances) instead of blocking.
    """

    def __init__(
        self,
        timeout: float,
        *,
        on_progress: Callable[[float], None] = lambda fraction: None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
    ) -> None:
        self._shared = _Shared(clock, sleep, on_progress)
        self._deadline = clock() + timeout

    @classmethod
    def _attempt(cls, shared: _Shared, deadline: float) -> Run:
        run = cls.__new__(cls)
        run._shared, run._deadline = shared, deadline
        return run

    def within(self, timeout: float) -> Run:
        """A run for one attempt: the same cancel flag and progress sink, a deadline no later than ours."""
        return Run._attempt(self._shared, min(self._deadline, self.now() + timeout))

    def now(self) -> float:
        return self._shared.clock()

    @property
    def canceled(self) -> bool:
        return self._shared.canceled.is_set()

    def cancel(self) -> None:
        """Asks the engine to stop (the worker calls this when the job is canceled)."""
        self._shared.canceled.set()

    def remaining(self) -> float:
        """Seconds left before the deadline, never negative."""
        return max(0.0, self._deadline - self.now())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def progress(self, fraction: float) -> None:
        self._shared.on_progress(min(1.0, max(0.0, fraction)))

    def wait(self, seconds: float) -> None:
        """Sleeps up to `seconds`, no later than the deadline; a cancel wakes it at once."""
        seconds = min(seconds, self.remaining())
        if seconds <= 0 or self.canceled:
            return
        if self._shared.sleep is not None:
            self._shared.sleep(seconds)
        else:
            self._shared.canceled.wait(seconds)
