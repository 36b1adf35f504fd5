"""A write queued for a batch, how its caller waits for it (a thread's Future or an event loop's), and
the shape of a write the event loop can send itself as one row of a batch statement (PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection

if TYPE_CHECKING:
    from imagegen.storage.sql.driver import RowsStatement

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
Batch = dict[str, Any]  # what the calls of one batch share, e.g. a value read once per transaction
BEFORE_COMMIT = "before_commit"  # batch[BEFORE_COMMIT][name] = run(conn): once per batch, last


@dataclass
class QueuedCall(Generic[R]):
    """A queued call and how its caller waits: a thread's Future, or a future of an event loop."""

    run: Callable[[Connection, Batch], R]
    future: Future[R] | asyncio.Future[R]
    order: str
    started: bool = False

    def start(self) -> bool:
        """Marks the call as running; False if its caller has given up already (it is skipped)."""
        if not self.started:
            if isinstance(self.future, Future):
                self.started = self.future.set_running_or_notify_cancel()
            else:
                self.started = not self.future.cancelled()
        return self.started

    def resolve(self, value: Any, error: BaseException | None) -> None:
        if isinstance(self.future, Future):
            if not self.future.done():
                _settle(self.future, value, error)
            return
        loop = self.future.get_loop()
        if _running_loop() is loop:
            _settle(self.future, value, error)
        else:
            loop.call_soon_threadsafe(_settle, self.future, value, error)


def _settle(future: Future[Any] | asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # an event loop's future its caller canceled
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def call_order(call: QueuedCall[Any]) -> str:
    return call.order


class HandOver:
    """A call's answer when its statement moved nothing: the writer thread runs it whole instead."""


HAND_OVER = HandOver()


@dataclass(frozen=True)
class LoopStatement(Generic[R_co]):
    """One call's row for a statement that applies many calls' rows in one execution.

    Calls with the same `key` (e.g. the user whose balance the row moves) never share an execution:
    the second goes in the next one, after the first in the same transaction. `answer` gives the
    call's value from whether the statement applied its row, or HAND_OVER.
    """

    statement: RowsStatement
    row: dict[str, Any]
    key: Hashable
    answer: Callable[[bool], R_co | HandOver]


class LoopPipelined(Protocol[R_co]):
    """A write call that can also be one statement of a batch the event loop pipelines."""

    @property
    def pipelines(self) -> bool:
        """False for a call that must run whole (on the writer thread)."""

    def on_loop(self) -> LoopStatement[R_co]: ...
