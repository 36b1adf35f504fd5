"""A thread pool an adapter owns, for the synchronous calls it does not run on the event loop.

The SQL and Firestore drivers are synchronous: an adapter awaits their calls on these threads, so
that the loop serves other requests meanwhile. One pool per adapter, shut down with it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
CHUNK = 500  # items a generator gives per hop to a thread


class Threads:
    def __init__(self, count: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(count, thread_name_prefix=name)

    async def run(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    async def iterate(self, items: Generator[T, None, None]) -> AsyncIterator[T]:
        """The items of a synchronous generator (e.g. one read transaction's rows), read on the
        threads a chunk at a time; the generator is closed on a thread too, however this ends."""
        try:
            while chunk := await self.run(_next_chunk, items):
                for item in chunk:
                    yield item
        finally:
            await self.run(items.close)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _next_chunk(items: Generator[T, None, None]) -> list[T]:
    return list(itertools.islice(items, CHUNK))
