"""One event loop for a benchmark process's own storage calls (the ports are async).

A storage adapter is built for the loop it first runs on; a benchmark that drives one from plain
code runs every call on this same loop, as a Cloud Function instance does.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


@functools.cache
def _runner() -> asyncio.Runner:
    return asyncio.Runner()


def run(work: Coroutine[Any, Any, T]) -> T:
    return _runner().run(work)
