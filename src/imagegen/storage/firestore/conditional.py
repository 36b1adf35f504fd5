"""Read, decide, and write only if nothing changed: the create path's alternative to transactions.

A Firestore transaction locks what it reads (pessimistically, for server SDKs and in the emulator):
function instances debiting at once wait on each other's locks, even across users when a query is
read, until one is aborted ("transaction lock timeout"). The create path's credit moves read their
documents plainly instead and commit one batch in which every update is conditional on the update
time that was read and every new document is a create() (refused if it exists). A concurrent change
makes the whole commit fail; the decision is then made again on fresh reads. The guarantee is a
transaction's: nothing is written unless every document written is still as it was read.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from imagegen.storage.firestore.errors import Contention

R = TypeVar("R")
BUDGET_SECONDS = 3.0  # then Contention: the caller answers 429 (a create) or leaves it to the sweeper
FIRST_BACKOFF = 0.004
MAX_BACKOFF = 0.15
CONFLICTS = (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Aborted)


class Reads:
    """The documents read for one decision, by reference."""

    def __init__(self, snaps: Sequence[Any]) -> None:
        self._snaps = {snap.reference.path: snap for snap in snaps}

    def __getitem__(self, ref: firestore.DocumentReference) -> Any:
        return self._snaps[ref.path]


class Writes:
    """The batch a decision fills: conditional updates, refusing creates, blind increments."""

    def __init__(self, db: firestore.Client) -> None:
        self._db = db
        self._batch = db.batch()
        self._paths: list[str] = []
        self.update_times: dict[str, Any] = {}

    def update(self, snap: Any, changes: dict[str, Any]) -> None:
        """Changes a document read for this decision, if it has not changed since."""
        option = self._db.write_option(last_update_time=snap.update_time)
        self._batch.update(snap.reference, changes, option=option)
        self._paths.append(snap.reference.path)

    def create(self, ref: firestore.DocumentReference, data: dict[str, Any]) -> None:
        self._batch.create(ref, data)
        self._paths.append(ref.path)

    def increment(self, ref: firestore.DocumentReference, field: str, by: int) -> None:
        """A change that does not depend on what the document holds (a counter)."""
        self._batch.update(ref, {field: firestore.Increment(by)})
        self._paths.append(ref.path)

    @property
    def empty(self) -> bool:
        return not self._paths

    def commit(self) -> None:
        results = self._batch.commit()
        self.update_times = {
            path: result.update_time for path, result in zip(self._paths, results, strict=True)
        }


def commit_unchanged(
    db: firestore.Client,
    refs: Sequence[firestore.DocumentReference],
    decide: Callable[[Reads, Writes], R],
    budget_seconds: float = BUDGET_SECONDS,
) -> tuple[R, Writes]:
    """Reads `refs` (one round trip), lets `decide` fill the writes, commits them (another).

    `decide` may raise (nothing is written); on a conflict it runs again on fresh reads, with a short
    jittered pause, until `budget_seconds` have passed: then Contention.
    """
    deadline = time.monotonic() + budget_seconds
    backoff = FIRST_BACKOFF
    while True:
        writes = Writes(db)
        result = decide(Reads(list(db.get_all(list(refs)))), writes)
        if writes.empty:
            return result, writes
        try:
            writes.commit()
        except CONFLICTS as exc:
            if time.monotonic() + backoff > deadline:
                raise Contention(f"documents kept changing under this write: {exc.message}") from exc
            time.sleep(random.uniform(0, backoff))
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        return result, writes
