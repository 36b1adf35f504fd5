"""The in-process workers: `settings.workers` job tasks, a heartbeat that extends their leases, and
the recovery pass.

Each worker runs one job at a time, on the process's engines (one JobEngines for all its workers),
and claims only the jobs of `settings.models` when set. Workers sleep on a JobSignal that a new job
raises (or poll, for jobs enqueued by other processes); a lease that the heartbeat keeps fresh tells
other processes the job is alive, and a periodic recovery pass requeues or refunds the jobs of
workers that died.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from imagegen.background.engines import JobEngines
from imagegen.background.jobs import JobLimits, JobStorage, lease_until, recover_expired_jobs, run_job
from imagegen.background.signal import JobSignal
from imagegen.background.tasks import Tasks
from imagegen.clock import utcnow
from imagegen.domain.ids import new_id
from imagegen.ports import IdempotencyStore, ImageStore, Lease
from imagegen.settings import Settings

log = logging.getLogger("imagegen.worker")
PURGE_EVERY_SECONDS = 60.0


class WorkerStorage(JobStorage, IdempotencyStore, Protocol):
    """Jobs, and the idempotency store the recovery pass purges."""


class WorkerPool:
    def __init__(
        self,
        storage: WorkerStorage,
        engines: JobEngines,
        images: ImageStore,
        settings: Settings,
        signal: JobSignal,
        on_finished: Callable[[str], None] = lambda request_id: None,
    ) -> None:
        self.storage = storage
        self.engines = engines
        self.limits = job_limits(settings)
        self.images = images
        self.settings = settings
        self.signal = signal
        self.on_finished = on_finished
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{new_id(6)}"
        self._running: dict[str, str] = {}  # request id -> worker id
        self._last_purge = 0.0

    def start(self, tasks: Tasks) -> None:
        tasks.start("imagegen-recovery", self._recovery_loop())
        if self.settings.workers == 0:
            return
        tasks.start("imagegen-heartbeat", self._heartbeat_loop())
        for n in range(self.settings.workers):
            tasks.start(f"imagegen-worker-{n}", self._work_loop(f"{self.process_id}/{n}"))

    async def _work_loop(self, worker_id: str) -> None:
        while True:
            seen = self.signal.count
            try:
                worked = await self.run_one(worker_id)
            except Exception:
                log.exception("worker %s: could not claim or finish a job; retrying", worker_id)
                worked = False
                await asyncio.sleep(self.settings.poll_interval_seconds)
            if not worked:
                await self.signal.wait(seen, self.settings.poll_interval_seconds)

    async def run_one(self, worker_id: str) -> bool:
        now = utcnow()
        lease = Lease(worker_id, lease_until(now, self.settings.job_lease_seconds))
        job = await self.storage.claim_job(lease, now, self.settings.served_models)
        if job is None:
            return False
        self._running[job.id] = worker_id
        running = asyncio.ensure_future(
            run_job(self.storage, self.engines, self.images, job, worker_id, limits=self.limits)
        )
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            # Stopping: the job this worker holds is finished first (the stop waits for it, up to
            # its timeout), rather than left running until its lease runs out and it is retried.
            await running
            raise
        finally:
            if self._running.get(job.id) == worker_id:  # not if another worker took it over
                del self._running[job.id]
            self.on_finished(job.id)
        return True

    async def _purge_idempotency_keys(self) -> None:
        if time.monotonic() - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = time.monotonic()
        retention = timedelta(hours=self.settings.idempotency_retention_hours)
        await self.storage.purge_idempotency(utcnow() - retention)

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.job_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                until = lease_until(utcnow(), self.settings.job_lease_seconds)
                await self.storage.extend_leases(dict(self._running), until)
            except Exception:
                log.exception("heartbeat failed; leases may expire and be taken over")

    async def _recovery_loop(self) -> None:
        while True:
            try:
                await recover_expired_jobs(
                    self.storage, utcnow(), max_attempts=self.settings.job_max_attempts
                )
                await self._purge_idempotency_keys()
            except Exception:
                log.exception("recovery pass failed; will retry")
            await asyncio.sleep(self.settings.recovery_interval_seconds)


def job_limits(settings: Settings) -> JobLimits:
    return JobLimits(timeout_s=settings.job_timeout_seconds, check_every_s=settings.cancel_check_seconds)
