"""The queue as operators see it: per model, how many jobs wait, how many run, and since when.

Adapters count; this module turns their counts into `ModelQueue`s, so that every storage answers
the same shape in the same order (by model name).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from imagegen.domain.generation import Status


@dataclass(frozen=True)
class ModelQueue:
    model: str
    pending: int
    running: int
    oldest_pending_at: datetime | None  # when the oldest waiting job was created
    oldest_pending_age_s: float | None  # how long it has waited, at the time of the read


@dataclass(frozen=True)
class QueueCount:
    """What an adapter counts: the jobs of one model in one status (pending or running)."""

    model: str
    status: Status
    count: int
    oldest: datetime | None  # the oldest one's creation time


QUEUED = (Status.PENDING, Status.RUNNING)


def model_queues(counts: Iterable[QueueCount], now: datetime) -> list[ModelQueue]:
    """One ModelQueue per model counted, by name."""
    pending: dict[str, tuple[int, datetime | None]] = {}
    running: dict[str, int] = {}
    for count in counts:
        if count.status is Status.PENDING:
            pending[count.model] = (count.count, count.oldest)
        elif count.status is Status.RUNNING:
            running[count.model] = count.count
    names = sorted({*pending, *running})
    queues = []
    for name in names:
        waiting, oldest = pending.get(name, (0, None))
        age = None if oldest is None else max(0.0, (now - oldest).total_seconds())
        queues.append(ModelQueue(name, waiting, running.get(name, 0), oldest, age))
    return queues


def including(queues: Iterable[ModelQueue], models: Iterable[str]) -> list[ModelQueue]:
    """`queues` with an empty queue added for each of `models` that has none, by name."""
    by_model = {queue.model: queue for queue in queues}
    for model in models:
        by_model.setdefault(model, ModelQueue(model, 0, 0, None, None))
    return [by_model[name] for name in sorted(by_model)]
