"""The job use cases: run one claimed generation to its end, and recover jobs whose worker died.

A job ends in exactly one of: completed (image stored), failed and refunded (the model failed, or the
job kept losing its worker), or handed back to the queue for another try. Each end is one conditional
storage call, so a duplicate delivery or a late worker changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from imagegen import metrics
from imagegen.clock import utcnow
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.generation import GenerationRequest, GenerationSpec
from imagegen.models.base import ImageModel, ModelFailure
from imagegen.ports import CatalogStore, ImageStore, Jobs, Lease

log = logging.getLogger("imagegen.jobs")


class JobStorage(Jobs, CatalogStore, Protocol):
    """A job reads its model's settings and ends with one of the Jobs moves."""


@dataclass(frozen=True)
class JobOutcome:
    request_id: str
    status: str  # completed | failed | lost (another worker owns it now)
    image_url: str | None = None  # where the completed image is stored


async def run_job(
    storage: JobStorage,
    model: ImageModel,
    images: ImageStore,
    request: GenerationRequest,
    worker_id: str,
    *,
    known_settings: ModelSettings | None = None,
) -> JobOutcome:
    """`known_settings`: the model's settings as of the request's debit (a Cloud Function's cached
    catalog, whose version the debit checked), else read now: an admin's edit applies at once.

    The model draws on a thread: it is CPU work (or a blocking client), and the loop keeps serving.
    Its end is one INFO line (ids, outcome, duration) and the job metrics (metrics.py).
    """
    started = time.monotonic()
    outcome = await _run(storage, model, images, request, worker_id, known_settings)
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
    model: ImageModel,
    images: ImageStore,
    request: GenerationRequest,
    worker_id: str,
    known_settings: ModelSettings | None,
) -> JobOutcome:
    settings = known_settings or await storage.model_settings(request.model)
    spec = GenerationSpec(
        request.user_id, request.model, request.style, request.color, request.size, request.prompt
    )
    try:
        if settings is None:
            raise ModelFailure(f"model '{request.model}' is no longer in the catalog")
        png = await asyncio.to_thread(model.generate, spec, settings)
        url = await images.put(request.id, png)
    except ModelFailure as exc:
        return await _fail(storage, request, worker_id, str(exc))
    except Exception as exc:  # our fault, not the client's: refund rather than charge for nothing
        log.exception("job %s failed unexpectedly", request.id)
        return await _fail(storage, request, worker_id, f"internal error: {type(exc).__name__}")
    done = await storage.complete(request.id, worker_id, url, utcnow())
    return JobOutcome(request.id, "completed", url) if done else JobOutcome(request.id, "lost")


async def _fail(storage: Jobs, request: GenerationRequest, worker_id: str, error: str) -> JobOutcome:
    failed = await storage.fail_and_refund(request.id, error, utcnow(), worker_id=worker_id)
    return JobOutcome(request.id, "failed" if failed else "lost")


async def run_one(
    storage: JobStorage, model: ImageModel, images: ImageStore, worker_id: str, lease_seconds: float
) -> GenerationRequest | None:
    """Claims the oldest queued job and runs it to its end; the job, or None if there was none."""
    now = utcnow()
    job = await storage.claim_job(Lease(worker_id, lease_until(now, lease_seconds)), now)
    if job is not None:
        await run_job(storage, model, images, job, worker_id)
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
