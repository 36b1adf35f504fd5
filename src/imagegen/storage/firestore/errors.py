"""Firestore's driver errors become imagegen's, and contended transactions run again.

Firestore (and its emulator) lock what a transaction reads; two transactions that read one document
and then both write it wait on each other until one is aborted (ABORTED). That transaction did
nothing and simply runs again, after a jittered pause so that the losers do not collide once more.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from imagegen import metrics
from imagegen.domain.errors import Conflict, ImagegenError, InvalidInput, StorageUnavailable

P = ParamSpec("P")
R = TypeVar("R")

MAX_ATTEMPTS = 12
BACKOFF_SECONDS = 0.25  # the n-th retry waits up to n x this (capped at 4x)

UNAVAILABLE = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Unknown,
    gexc.ResourceExhausted,
    gexc.Unauthenticated,
    gexc.PermissionDenied,
    gexc.RetryError,
)


class Contention(StorageUnavailable):
    """A transaction kept being aborted by concurrent ones: a hot document (one busy user)."""


def run_transaction(client: firestore.Client, body: Callable[..., R], *args: Any) -> R:
    """Runs `body(transaction, *args)` in a read-write transaction, retried while it is aborted.

    `body` must do all its reads before its writes (a Firestore rule) and may raise imagegen errors,
    which roll the transaction back and propagate.
    """
    wrapped = firestore.transactional(body)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # One attempt per client transaction: the client's own retries do not back off.
        transaction = client.transaction(max_attempts=1)
        try:
            return wrapped(transaction, *args)
        except ImagegenError:
            raise
        except Exception as exc:
            if not _aborted(exc):
                raise
        time.sleep(random.uniform(0, BACKOFF_SECONDS * min(attempt, 4)))
    metrics.storage_error("contention")
    raise Contention(f"a transaction was aborted {MAX_ATTEMPTS} times by concurrent ones; try again")


def _aborted(exc: BaseException) -> bool:
    """Whether a transaction failed because a concurrent one won (also when its rollback then failed)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, gexc.Aborted):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except ImagegenError:
        raise
    except gexc.Aborted as exc:
        metrics.storage_error("contention")
        raise Contention(f"transaction conflict: {exc.message}") from exc
    except UNAVAILABLE as exc:
        metrics.storage_error("unavailable")
        raise StorageUnavailable(f"Firestore unavailable: {_message(exc)}") from exc
    except gexc.AlreadyExists as exc:
        raise Conflict(f"already exists: {exc.message}") from exc
    except gexc.InvalidArgument as exc:
        raise InvalidInput(f"Firestore refused the data: {exc.message}") from exc


def translated(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with translate_errors():
            return method(*args, **kwargs)

    return wrapper


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc).splitlines()[0]
