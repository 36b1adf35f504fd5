"""The job use cases: run one claimed generation to its end, and recover jobs whose worker died.

A job ends in exactly one of: completed (image stored), failed and refunded (the engines failed, it
ran out of time, or it kept losing its worker), canceled and refunded (by its user, while pending
or running), or handed back to the queue for another try. Each end is one conditional storage call,
so a duplicate delivery, a late worker or a result that arrives after the end changes nothing.

While the engine works (on a thread: the engine port is synchronous), the job's coroutine reads
the request's status every `check_every_s`: a cancel (or any other end) written by another process
is noticed within that, and the engine is told through `run.cancel()`. Progress the engine reports
is written at most every `progress_every_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from imagegen import metrics
from imagegen.background.engines import JobEngines
from imagegen.clock import utcnow
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.errors import ImagegenError
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.engines.errors import EngineError, GenerationCanceled
from imagegen.engines.request import ImageRequest
from imagegen.engines.run import Run
from imagegen.ports import CatalogStore, ImageStore, Jobs, Lease

log = logging.getLogger("imagegen.jobs")


class JobStorage(Jobs, CatalogStore, Protocol):
    """A job reads its model's settings and its own status, and ends with one of the Jobs moves."""

    async def get_request(self, request_id: str) -> GenerationRequest | None: ...


@dataclass(frozen=True)
class JobLimits:
    timeout_s: float = 600.0  # the whole generation: every attempt, back-off and fail-over
    check_every_s: float = 0.5  # a cancel written elsewhere is noticed within this
    progress_every_s: float = 1.0  # progress is written at most this often per job
    grace_s: float = 5.0  # an engine still busy this long past the deadline is abandoned


@dataclass(frozen=True)
class JobOutcome:
    request_id: str
    status: str  # completed | failed | canceled | lost (another worker or move owns it now)
    image_url: str | None = None  # where the completed image is stored


class _Ended(Exception):
    """The request was ended by someone else while its engine worked (canceled, recovered)."""

    def __init__(self, status: Status | None) -> None:
        self.status = status


async def run_job(
    storage: JobStorage,
    engines: JobEngines,
    images: ImageStore,
    request: GenerationRequest,
    worker_id: str,
    *,
    limits: JobLimits = JobLimits(),
    known_settings: ModelSettings | None = None,
) -> JobOutcome:
    """`known_settings`: the model's settings as of the request's debit (a Cloud Function's cached
    catalog, whose version the debit checked), else read now: an admin's edit applies at once.

    Its end is one INFO line (ids, outcome, duration) and the job metrics (metrics.py).
    """
    started = time.monotonic()
    outcome = await _run(storage, engines, images, request, worker_id, limits, known_settings)
    reported(request, worker_id, outcome, time.monotonic() - started)
    return outcome


def reported(request: GenerationRequest, worker_id: str, outcome: JobOutcome, seconds: float) -> None:
    if outcome.status in ("completed", "failed"):
        refunded = request.cost if outcome.status == "failed" else 0
        metrics.generation_finished(request.model, outcome.status, refunded=refunded)
    metrics.job_ran(request.model, outcome.status, seconds)
    fields = {
        "generationId": request.id,
        "userId": request.user_id,
        "model": request.model,
        "workerId": worker_id,
        "outcome": outcome.status,
        "durationMs": round(seconds * 1000, 1),
    }
    log.info(
        "job %s %s: user %s, model %s, worker %s, %.0f ms",
        request.id,
        outcome.status,
        request.user_id,
        request.model,
        worker_id,
        seconds * 1000,
        extra={"fields": fields},
    )


async def _run(
    storage: JobStorage,
    engines: JobEngines,
    images: ImageStore,
    request: GenerationRequest,
    worker_id: str,
    limits: JobLimits,
    known_settings: ModelSettings | None,
) -> JobOutcome:
    settings = known_settings or await storage.model_settings(request.model)
    if settings is None:
        return await _fail(
            storage, request, worker_id, f"model '{request.model}' is no longer in the catalog"
        )
    try:
        binding = engines.binding(settings)
    except ImagegenError as exc:  # the stored binding does not validate in this process
        return await _fail(storage, request, worker_id, exc.message)
    progress = _Progress(storage, request.id, worker_id, limits.progress_every_s)
    run = Run(limits.timeout_s, on_progress=progress.note)
    image = ImageRequest(
        request.id, request.model, request.prompt, request.style, request.color, request.size
    )
    generation = engines.start(binding, image, run)
    try:
        png = await _watch(storage, request, run, generation, limits, progress)
        if run.canceled:
            raise GenerationCanceled()  # it came back after the cancel: not ours to complete
        if run.expired:
            raise TimeoutError  # it came back after the deadline: the job has timed out
        url = await images.put(request.id, png)
    except _Ended as ended:
        return JobOutcome(request.id, "canceled" if ended.status is Status.CANCELED else "lost")
    except GenerationCanceled:
        return JobOutcome(request.id, "canceled")
    except TimeoutError:
        return await _fail(storage, request, worker_id, _timed_out(limits))
    except EngineError as exc:
        return await _fail(storage, request, worker_id, exc.message)
    except Exception as exc:  # our fault, not the client's: refund rather than charge for nothing
        log.exception("job %s failed unexpectedly", request.id)
        return await _fail(storage, request, worker_id, f"internal error: {type(exc).__name__}")
    done = await storage.complete(request.id, worker_id, url, utcnow())
    return JobOutcome(request.id, "completed", url) if done else JobOutcome(request.id, "lost")


async def _watch(
    storage: JobStorage,
    request: GenerationRequest,
    run: Run,
    generation: asyncio.Future[bytes],
    limits: JobLimits,
    progress: _Progress,
) -> bytes:
    """The engine's PNG, reading the request's status meanwhile; _Ended when it ended elsewhere,
    TimeoutError when the engine is still busy `grace_s` past the deadline (it is abandoned)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limits.timeout_s + limits.grace_s
    while True:
        done, _ = await asyncio.wait({generation}, timeout=limits.check_every_s)
        if done:
            return generation.result()
        if loop.time() >= give_up:
            run.cancel()
            _discard(generation)
            raise TimeoutError
        current = await storage.get_request(request.id)
        if current is None or current.status is not Status.RUNNING:
            run.cancel()  # the engine stops (ComfyUI's interrupt, A1111's); its result is discarded
            await asyncio.wait({generation}, timeout=limits.grace_s)
            _discard(generation)
            raise _Ended(None if current is None else current.status)
        await progress.flush()


def _discard(generation: asyncio.Future[bytes]) -> None:
    """Whatever the abandoned generation gives later (an image, an error) is dropped, unlogged."""
    generation.add_done_callback(lambda done: done.cancelled() or done.exception())


def _timed_out(limits: JobLimits) -> str:
    return f"timed out: the generation took longer than {limits.timeout_s:g} s"


class _Progress:
    """The engine's last reported fraction (set from its thread), written now and then."""

    def __init__(self, storage: Jobs, request_id: str, worker_id: str, every_s: float) -> None:
        self._storage, self._id, self._worker = storage, request_id, worker_id
        self._every = every_s
        self._latest: float | None = None
        self._written: float | None = None
        self._at = 0.0

    def note(self, fraction: float) -> None:
        self._latest = fraction

    async def flush(self) -> None:
        latest, now = self._latest, asyncio.get_running_loop().time()
        if latest is None or latest == self._written or now - self._at < self._every:
            return
        self._written, self._at = latest, now
        try:
            await self._storage.set_progress(self._id, self._worker, latest)
        except Exception:  # progress is a courtesy: the job goes on
            log.warning("job %s: could not write its progress", self._id, exc_info=True)


async def _fail(storage: Jobs, request: GenerationRequest, worker_id: str, error: str) -> JobOutcome:
    failed = await storage.fail_and_refund(request.id, error, utcnow(), worker_id=worker_id)
    return JobOutcome(request.id, "failed" if failed else "lost")


async def run_one(
    storage: JobStorage,
    engines: JobEngines,
    images: ImageStore,
    worker_id: str,
    lease_seconds: float,
    *,
    limits: JobLimits = JobLimits(),
    models: frozenset[str] | None = None,
) -> GenerationRequest | None:
    """Claims the oldest queued job (of `models`) and runs it to its end; the job, or None."""
    now = utcnow()
    job = await storage.claim_job(Lease(worker_id, lease_until(now, lease_seconds)), now, models)
    if job is not None:
        await run_job(storage, engines, images, job, worker_id, limits=limits)
    return job


@dataclass(frozen=True)
class Recovery:
    requeued: int
    failed: int


async def recover_expired_jobs(storage: Jobs, now: datetime, *, max_attempts: int) -> Recovery:
    """Jobs whose lease ran out (their worker died) go back to the queue, or fail and are refunded."""
    requeued = failed = 0
    for job in await storage.expired_jobs(now):
        if job.attempts >= max_attempts:
            error = f"worker lost {job.attempts} times; giving up"
            if await storage.fail_and_refund(job.id, error, now, lease_expired=True):
                failed += 1
                metrics.generation_finished(job.model, "failed", refunded=job.cost)
                log.info(
                    "job %s failed: user %s, model %s, %s",
                    job.id, job.user_id, job.model, error,
                    extra={"fields": {"generationId": job.id, "userId": job.user_id, "model": job.model,
                                      "outcome": "failed", "error": error}},
                )  # fmt: skip
        else:
            requeued += await storage.requeue(job.id, now)
    if requeued or failed:
        log.warning("recovered expired jobs: %d requeued, %d failed and refunded", requeued, failed)
    return Recovery(requeued, failed)


def lease_until(now: datetime, lease_seconds: float) -> datetime:
    return now + timedelta(seconds=lease_seconds)
