"""Driver errors translated into imagegen's: conflicts to retry, a database that is not there."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from imagegen import metrics
from imagegen.domain.errors import StorageUnavailable

P = ParamSpec("P")
R = TypeVar("R")


class Retryable(StorageUnavailable):
    """A serialization failure or deadlock: the transaction did nothing and may simply run again."""


# PostgreSQL (and the distributed engines that speak its protocol) ask clients to retry these.
RETRYABLE_SQLSTATES = {"40001", "40P01"}
MAX_ATTEMPTS = 8


def retrying(method: Callable[P, R]) -> Callable[P, R]:
    """Runs a whole storage method again (with jittered backoff) when its transaction must be retried."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except Retryable:
                if attempt == MAX_ATTEMPTS:
                    metrics.storage_error("contention")
                    raise
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    return wrapper


@contextmanager
def translate_errors() -> Iterator[None]:
    """Driver errors that mean 'the database is not there or too busy' become StorageUnavailable."""
    try:
        yield
    except DBAPIError as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc


def translate(exc: DBAPIError) -> Exception:
    """Retryable for a conflict, StorageUnavailable for a database that is gone or busy, else `exc`."""
    if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return Retryable(f"transaction conflict: {_first_line(exc)}")
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        metrics.storage_error("unavailable")
        return StorageUnavailable(f"database unavailable: {_first_line(exc)}")
    return exc


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig else str(exc)
