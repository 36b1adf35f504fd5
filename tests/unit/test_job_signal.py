"""How idle workers wait for jobs: woken by a signal, never spinning on a backlog of old ones."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from imagegen.settings import Settings
from imagegen.worker import JobSignal, WorkerPool


def test_a_wait_returns_at_once_when_a_job_was_signalled_since_the_count_was_noted() -> None:
    signal = JobSignal()
    seen = signal.count
    signal.enqueued()

    started = time.monotonic()
    signal.wait(seen, timeout=5)

    assert time.monotonic() - started < 1


def test_a_wait_sleeps_until_the_next_signal() -> None:
    signal = JobSignal()
    seen = signal.count
    threading.Timer(0.2, signal.enqueued).start()

    started = time.monotonic()
    signal.wait(seen, timeout=5)

    assert 0.15 < time.monotonic() - started < 2


def test_signals_raised_while_every_worker_was_busy_are_not_a_backlog() -> None:
    signal = JobSignal()
    for _ in range(1000):
        signal.enqueued()
    seen = signal.count  # a worker looked after all of them and found nothing

    started = time.monotonic()
    signal.wait(seen, timeout=0.3)

    assert time.monotonic() - started >= 0.25


class EmptyQueue:
    """A storage with no job, counting the claims."""

    def __init__(self) -> None:
        self.claims = 0

    def claim_job(self, worker_id: str, now: datetime, lease_until: datetime) -> None:
        self.claims += 1

    def expired_jobs(self, now: datetime) -> list[Any]:
        return []

    def purge_idempotency(self, before: datetime) -> int:
        return 0

    def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int:
        return 0


def test_idle_workers_look_once_per_signal_burst_then_wait_for_the_polling_interval() -> None:
    storage, signal = EmptyQueue(), JobSignal()
    for _ in range(5000):  # a burst of creates, all of it claimed by workers elsewhere
        signal.enqueued()
    settings = Settings(workers=2, poll_interval_seconds=0.5)
    pool = WorkerPool(storage, None, None, settings, signal)  # type: ignore[arg-type]

    pool.start()
    time.sleep(1.2)
    pool.stop()

    # Each worker looks at start, then every 0.5 s: about 6 claims, never thousands.
    assert 2 <= storage.claims <= 12
