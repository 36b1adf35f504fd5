"""The in-process worker pool: N job threads, a heartbeat that extends their leases, and recovery.

Each worker runs one job at a time. Workers sleep on a signal that a new job raises (or poll, for
jobs enqueued by other processes); a lease that a heartbeat keeps fresh tells other processes the job
is alive, and a periodic recovery pass requeues or refunds the jobs of workers that died.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from imagegen.clock import utcnow
from imagegen.domain.ids import new_id
from imagegen.jobs import lease_until, recover_expired_jobs, run_job
from imagegen.models.base import ImageModel
from imagegen.ports import ImageStore, Storage
from imagegen.settings import Settings

log = logging.getLogger("imagegen.worker")
PURGE_EVERY_SECONDS = 60.0


class JobSignal:
    """Wakes idle workers when a job is enqueued (in this process, or by another's NOTIFY).

    It counts signals rather than keeping a backlog of them: a worker notes the count before it
    looks for a job and, finding none, sleeps unless a job was signalled meanwhile. Under load,
    thousands of signals arrive while every worker is busy; kept as a backlog, they had idle workers
    claim back to back, finding nothing, for seconds after the queue had drained (on PostgreSQL,
    six server backends busy with it and the API's no-op route at a fifth of its rate).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._count = 0

    @property
    def count(self) -> int:
        """Signals so far: note it before looking for a job, and give it to `wait`."""
        return self._count

    def enqueued(self) -> None:
        with self._condition:
            self._count += 1
            self._condition.notify()

    def wake_all(self) -> None:
        with self._condition:
            self._count += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Sleeps up to `timeout`, unless a job was signalled since the count was `seen`."""
        with self._condition:
            if self._count == seen:
                self._condition.wait(timeout)


class WorkerPool:
    def __init__(
        self,
        storage: Storage,
        model: ImageModel,
        images: ImageStore,
        settings: Settings,
        signal: JobSignal,
        on_finished: Callable[[str], None] = lambda request_id: None,
    ) -> None:
        self.storage = storage
        self.model = model
        self.images = images
        self.settings = settings
        self.signal = signal
        self.on_finished = on_finished
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{new_id(6)}"
        self._stop = threading.Event()
        self._running: dict[str, str] = {}  # request id -> worker id
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._last_purge = 0.0

    def start(self) -> None:
        self._spawn(self._recovery_loop, "imagegen-recovery")
        if self.settings.workers == 0:
            return
        self._spawn(self._heartbeat_loop, "imagegen-heartbeat")
        for n in range(self.settings.workers):
            worker_id = f"{self.process_id}/{n}"
            self._spawn(functools.partial(self._work_loop, worker_id), f"imagegen-worker-{n}")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.signal.wake_all()
        for thread in self._threads:
            thread.join(timeout)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _work_loop(self, worker_id: str) -> None:
        while not self._stop.is_set():
            seen = self.signal.count
            try:
                worked = self.run_one(worker_id)
            except Exception:
                log.exception("worker %s: could not claim or finish a job; retrying", worker_id)
                worked = False
                self._stop.wait(self.settings.poll_interval_seconds)
            if not worked:
                self.signal.wait(seen, self.settings.poll_interval_seconds)

    def run_one(self, worker_id: str) -> bool:
        now = utcnow()
        job = self.storage.claim_job(worker_id, now, lease_until(now, self.settings.job_lease_seconds))
        if job is None:
            return False
        with self._lock:
            self._running[job.id] = worker_id
        try:
            run_job(self.storage, self.model, self.images, job, worker_id)
        finally:
            with self._lock:
                if self._running.get(job.id) == worker_id:  # not if another worker took it over
                    del self._running[job.id]
            self.on_finished(job.id)
        return True

    def _purge_idempotency_keys(self) -> None:
        if time.monotonic() - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = time.monotonic()
        retention = timedelta(hours=self.settings.idempotency_retention_hours)
        self.storage.purge_idempotency(utcnow() - retention)

    def _heartbeat_loop(self) -> None:
        interval = self.settings.job_lease_seconds / 3
        while not self._stop.wait(interval):
            with self._lock:
                leases = dict(self._running)
            try:
                self.storage.extend_leases(leases, lease_until(utcnow(), self.settings.job_lease_seconds))
            except Exception:
                log.exception("heartbeat failed; leases may expire and be taken over")

    def _recovery_loop(self) -> None:
        while True:
            try:
                recover_expired_jobs(self.storage, utcnow(), max_attempts=self.settings.job_max_attempts)
                self._purge_idempotency_keys()
            except Exception:
                log.exception("recovery pass failed; will retry")
            if self._stop.wait(self.settings.recovery_interval_seconds):
                return
