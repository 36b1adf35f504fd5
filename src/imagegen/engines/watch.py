"""A blocking call (one long HTTP request) made while the run is watched: progress is polled and a
cancel or the deadline is acted on at once, without waiting for the call to return."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

from imagegen.engines import errors
from imagegen.engines.errors import GenerationCanceled
from imagegen.engines.run import Run

T = TypeVar("T")


def watched(
    run: Run,
    call: Callable[[], T],
    *,
    every: float,
    tick: Callable[[], None] = lambda: None,
    stop: Callable[[], None] = lambda: None,
    server: str,
) -> T:
    """`call()`'s result. Every `every` seconds meanwhile, `tick()` (progress); on cancel or at the
    deadline, `stop()` (tell the server) and GenerationCanceled or a transient timeout. The call
    itself then ends on its own (its timeout is the run's), on a daemon thread nobody waits for."""
    done: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            done.put((True, call()))
        except BaseException as exc:  # handed to the waiting thread, which raises it
            done.put((False, exc))

    threading.Thread(target=target, name="engine-call", daemon=True).start()
    while True:
        try:
            ok, value = done.get(timeout=max(0.001, min(every, run.remaining())))
        except queue.Empty:
            if run.canceled or run.expired:
                stop()
                if run.canceled:
                    raise GenerationCanceled() from None
                raise errors.transient(f"the {server} server did not finish in time") from None
            tick()
            continue
        if ok:
            return value  # type: ignore[return-value]
        raise value  # type: ignore[misc]
