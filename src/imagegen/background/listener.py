"""Turns other processes' wake-ups (PostgreSQL's NOTIFY) into this process's: a job to claim, a job
that ended. Where other processes cannot be heard (SQLite, memory), `listen` returns at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from imagegen.background.completions import Completions
from imagegen.background.signal import JobSignal
from imagegen.ports import Database


async def listen(storage: Database, signal: JobSignal, completions: Completions) -> None:
    loop = asyncio.get_running_loop()
    await storage.listen(_on_loop(loop, signal.enqueued), _on_loop(loop, completions.finished))


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None]) -> Callable[..., None]:
    """`callback`, run on `loop` whichever thread the adapter calls it from (the signal and the
    completions live on the loop)."""

    def call(*args: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            callback(*args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    return call
