"""imagegen's Firebase deployment: Cloud Functions (Python) over the Firestore adapter.

The same service layer, auth (Bearer API keys), bodies and errors as the SQL deployment's case-study
routes (both edges read through imagegen.api.inputs and answer through imagegen.api.answers, so
bodies and errors cannot drift apart):

- createGenerationRequest (HTTPS, POST): debits, runs the job inline (Functions keep no background
  workers) and answers once the image is done, or 500 "AI generation failed, credits refunded.";
  202 with the request when it cannot finish it (the sweeper does). Priced and authorized from the
  instance's cache of the catalog and the keys, which the debit checks against the configuration
  version; created already running under this instance's lease, so its job needs no claim.
- getUserCredits (HTTPS, GET ?userId=&limit=&cursor=): the balance and the ledger, newest first.
- images (HTTPS, GET .../<id>.png): the generated images, from IMAGEGEN_IMAGE_STORE_URL.
- scheduleWeeklyReport (HTTPS, GET|POST, admin key): runs a report now (?week=2026-W47, or the last 7
  days) and returns it, as the SQL deployment's route of that name does (the case study's third curl).
- runWeeklyReports (scheduled, Monday 00:00 UTC): reports the previous ISO week, catching up the
  weeks it missed; each week is claimed in Firestore, so a duplicate trigger does nothing.
- sweepGenerationJobs (scheduled, every minute): finishes or refunds the requests whose run died
  (invariant 4), runs what is still pending, delivers due webhooks, purges old idempotency keys.

Settings come from the environment (IMAGEGEN_*, AI_FAILURE_RATE) as everywhere; the database is
IMAGEGEN_DATABASE_URL=firestore://PROJECT, by default the project the functions run in. Nothing
connects at import time: the first invocation of an instance builds its clients, and later ones
reuse them.

No `from __future__ import annotations` here: the Firebase CLI loads this file without registering
it in sys.modules, and dataclasses then cannot resolve string annotations
(tests/e2e/test_functions_deploy.py loads it exactly as the CLI does).
"""

import asyncio
import contextvars
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

from firebase_functions import https_fn, options, scheduler_fn

from imagegen import request_id, service
from imagegen.api import answers, inputs
from imagegen.background import jobs, scheduler
from imagegen.background.engines import JobEngines
from imagegen.background.webhooks import Dispatcher, signing_secret
from imagegen.background.workers import job_limits
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.domain.errors import BodyTooLarge, ImagegenError, InvalidInput
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.ids import new_id
from imagegen.engines.registry import Registry
from imagegen.ports import ImageStore, Lease, Storage
from imagegen.ratelimit import RateLimiter
from imagegen.service.config_cache import ConfigCache
from imagegen.service.keys import Principal
from imagegen.settings import Settings
from imagegen.storage import FIRESTORE_SCHEME, open_storage_adapter
from imagegen.storage.s3_images import open_image_store

log = logging.getLogger("imagegen.functions")
SWEEP_BUDGET_SECONDS = 45.0  # the sweeper runs every minute: leave it time to finish
RECHECK_SECONDS = 0.05  # a waiter whose job runs elsewhere looks again this often
# The image store's credentials (an S3-compatible bucket, e.g. Cloud Storage with HMAC keys): Secret
# Manager secrets, set with `firebase functions:secrets:set`, given to the functions that touch images.
IMAGE_STORE_SECRETS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
REGION = "us-central1"
options.set_global_options(region=REGION)
T = TypeVar("T")


@functools.cache
def runner() -> asyncio.Runner:
    """The instance's one event loop: every invocation runs its coroutine on it (Cloud Functions run
    one request at a time per instance), so the clients built on it are reused by the next one."""
    return asyncio.Runner()


def run(work: Coroutine[Any, Any, T]) -> T:
    # In the caller's context, not the runner's own: the invocation's request id goes along.
    return runner().run(work, context=contextvars.copy_context())


@dataclass
class Deployment:
    settings: Settings
    storage: Storage
    config: ConfigCache  # the catalog and the keys, as this instance last read them
    engines: JobEngines  # the instance's engines: one registry and Fleet, kept across invocations
    images: ImageStore
    limiter: RateLimiter
    worker_id: str

    def lease(self) -> Lease:
        return Lease(self.worker_id, jobs.lease_until(utcnow(), self.settings.job_lease_seconds))


@functools.cache
def deployment() -> Deployment:
    settings = Settings()
    url = settings.database_url or ""
    if not url.startswith(FIRESTORE_SCHEME):
        project = os.environ.get("GCLOUD_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
        if not project:
            raise RuntimeError("set IMAGEGEN_DATABASE_URL=firestore://PROJECT (or GCLOUD_PROJECT)")
        url = f"{FIRESTORE_SCHEME}{project}"
    instance = os.environ.get("K_REVISION") or socket.gethostname()
    storage = open_storage_adapter(url)
    worker_id = f"functions:{instance}:{os.getpid()}:{new_id(6)}"
    return Deployment(
        settings=settings,
        storage=storage,
        config=ConfigCache(storage),
        engines=JobEngines(
            Registry.discover(),
            failure_rate=settings.ai_failure_rate,
            latency_ms=settings.model_latency_ms,
            shared_slots=storage,  # each deployment's concurrency, across every instance
            owner=worker_id,
        ),
        # Functions have only a local /tmp: set IMAGEGEN_IMAGE_STORE_URL to a bucket (docs/firebase.md).
        images=open_image_store(settings.image_store_url, settings.images_dir),
        limiter=RateLimiter(settings.rate_per_user_per_second, settings.rate_burst_per_user),
        worker_id=worker_id,
    )


# -- HTTP plumbing: the same parsing, auth and answers as the FastAPI app (imagegen.api) ------------
def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> https_fn.Response:
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return https_fn.Response(
        payload, status=status, headers={**(headers or {}), "content-type": answers.JSON}
    )


def _answer(answer: answers.Answer) -> https_fn.Response:
    return _json(answer.body, answer.status, answer.headers)


Handler = Callable[[https_fn.Request], Coroutine[Any, Any, https_fn.Response]]


def _case_study(handler: Handler) -> Callable[[https_fn.Request], https_fn.Response]:
    """Runs the handler's coroutine on the instance's loop, and turns imagegen's errors into the
    case-study routes' `{"error": ...}` bodies (api/answers.py, as the FastAPI app does)."""

    @functools.wraps(handler)
    def wrapped(request: https_fn.Request) -> https_fn.Response:
        # The request's id, as the app's middleware makes it (imagegen.request_id): on the log
        # lines, in the error bodies, echoed in X-Request-ID.
        given = request.headers.get(request_id.HEADER)
        rid = request_id.from_client(given.encode("latin-1", "replace") if given is not None else None)
        token = request_id.current.set(rid)
        try:
            response = _handled(handler, request)
        finally:
            request_id.current.reset(token)
        response.headers[request_id.HEADER] = rid
        return response

    return wrapped


def _handled(handler: Handler, request: https_fn.Request) -> https_fn.Response:
    try:
        return run(handler(request))
    except ImagegenError as exc:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        return _answer(answers.case_study_error(exc))
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _answer(answers.unexpected(case_study=True))


def _method_not_allowed() -> https_fn.Response:
    return _answer(answers.method_not_allowed())


async def _principal(request: https_fn.Request, dep: Deployment) -> Principal:
    return await inputs.principal_for(dep.storage, dep.settings, request.headers.get("authorization"))


def _json_body(request: https_fn.Request, dep: Deployment) -> Any:
    raw = request.get_data(cache=False)
    if len(raw) > dep.settings.max_body_bytes:
        raise BodyTooLarge(dep.settings.max_body_bytes)
    return inputs.parse_json(raw)


def functions_base_url(request: https_fn.Request) -> str:
    """The URL a function's name is appended to: the emulator's /PROJECT/REGION, or cloudfunctions.net.

    imageUrl is this + /images/<id>.png, which the `images` function serves, unless
    IMAGEGEN_PUBLIC_URL names another base (a Hosting site that rewrites /images/** to it).
    """
    project = os.environ.get("GCLOUD_PROJECT")
    if project and os.environ.get("FUNCTIONS_EMULATOR") == "true":
        return f"{request.host_url.rstrip('/')}/{project}/{REGION}"
    if project and os.environ.get("K_SERVICE"):
        return f"https://{REGION}-{project}.cloudfunctions.net"
    return request.host_url.rstrip("/")  # functions-framework on its own: set IMAGEGEN_PUBLIC_URL


# -- createGenerationRequest -----------------------------------------------------------------------
@https_fn.on_request(memory=options.MemoryOption.MB_512, timeout_sec=120, secrets=IMAGE_STORE_SECRETS)
@_case_study
async def createGenerationRequest(request: https_fn.Request) -> https_fn.Response:  # noqa: N802
    if request.method != "POST":
        return _method_not_allowed()
    dep = deployment()
    principal = await inputs.cached_principal(dep.config, dep.settings, request.headers.get("authorization"))
    body = _json_body(request, dep)
    key = request.headers.get("Idempotency-Key")
    if key is not None and len(key) > 255:
        raise InvalidInput("Idempotency-Key must be at most 255 characters")
    settings = dep.settings
    created, fresh = await service.create_generation(
        dep.storage,
        body,
        inputs.create_rules(settings),
        now=utcnow(),
        idempotency_key=key,
        authorize=inputs.create_guard(dep.limiter, principal),
        config=dep.config,
        key_hash=principal.key_hash,
        claim=dep.lease(),
    )
    try:
        done = await finish(dep, created, fresh)
    except Exception:
        # The debit is committed: whatever happens now, the client gets its request's id (202),
        # and the sweeper finishes the job once its lease runs out.
        log.exception("create %s: the job could not be finished in this invocation", created.id)
        done = created
    return _generation_response(request, dep, done)


async def finish(dep: Deployment, created: GenerationRequest, fresh: bool) -> GenerationRequest:
    """Runs the job this invocation created (it holds its lease), then waits for it with the
    service's wait: at once for a job run here, else running queued jobs meanwhile (a replayed
    Idempotency-Key whose first invocation runs it, or a job handed back to the queue)."""
    current = created
    if fresh:
        # Priced from the cache's catalog, whose version the debit checked: no need to read it again.
        snapshot = dep.config.snapshot()
        known = snapshot[1].models.get(created.model) if snapshot else None
        outcome = await jobs.run_job(
            dep.storage,
            dep.engines,
            dep.images,
            created,
            dep.worker_id,
            limits=job_limits(dep.settings),
            known_settings=known,
        )
        if outcome.status == "completed":
            # As written by the completion: no need to read it back.
            current = replace(
                created, status=Status.COMPLETED, image_url=outcome.image_url, completed_at=utcnow()
            )
        else:
            current = await service.get_generation(dep.storage, created.id)
    return await service.wait_until_done(
        dep.storage,
        current,
        dep.settings.wait_timeout_seconds,
        recheck=RECHECK_SECONDS,
        while_waiting=functools.partial(run_one, dep),
    )


async def run_one(dep: Deployment) -> bool:
    job = await jobs.run_one(
        dep.storage,
        dep.engines,
        dep.images,
        dep.worker_id,
        dep.settings.job_lease_seconds,
        limits=job_limits(dep.settings),
        models=dep.settings.served_models,
    )
    return job is not None


def _generation_response(
    request: https_fn.Request, dep: Deployment, done: GenerationRequest
) -> https_fn.Response:
    base = dep.settings.public_url or functions_base_url(request)
    return _answer(answers.generation_answer(done, base))


# -- getUserCredits ----------------------------------------------------------------------------------
@https_fn.on_request()
@_case_study
async def getUserCredits(request: https_fn.Request) -> https_fn.Response:  # noqa: N802
    if request.method != "GET":
        return _method_not_allowed()
    dep = deployment()
    principal = await _principal(request, dep)
    user_id = request.args.get("userId")
    if not user_id:
        raise InvalidInput("Missing required query parameter: userId")
    service.check_user_id(user_id)
    principal.may_act_for(user_id)
    user, page = await service.get_credits(
        dep.storage,
        user_id,
        limit=inputs.page_size(request.args.get("limit"), dep.settings),
        cursor=request.args.get("cursor") or None,
    )
    return _json(answers.credits_answer(user, page))


# -- images ----------------------------------------------------------------------------------------
@https_fn.on_request(secrets=IMAGE_STORE_SECRETS)
def images(request: https_fn.Request) -> https_fn.Response:
    """GET .../<id>.png: a generated image, no key needed (as the SQL deployment's route).

    imageUrl is the functions' base URL + /images/<id>.png (see functions_base_url), so any path
    ending in <id>.png is taken.
    """
    if request.method != "GET":
        return _method_not_allowed()
    name = request.path.rstrip("/").rpartition("/")[2]
    png = run(deployment().images.open(name.removesuffix(".png"))) if name.endswith(".png") else None
    if png is None:
        return _answer(answers.refusal(404, "not_found", "Image not found", case_study=True))
    return https_fn.Response(png, status=200, headers={"content-type": "image/png"})


# -- reports -----------------------------------------------------------------------------------------
@https_fn.on_request(timeout_sec=300)
@_case_study
async def scheduleWeeklyReport(request: https_fn.Request) -> https_fn.Response:  # noqa: N802
    """The case study's third curl: runs a report now and returns it (admin key)."""
    if request.method not in ("GET", "POST"):
        return _method_not_allowed()
    dep = deployment()
    (await _principal(request, dep)).require_admin()
    now = utcnow()
    period = service.parse_period(request.args.get("week") or None, now=now)
    return _json(await service.run_report(dep.storage, period, now))


@scheduler_fn.on_schedule(schedule="0 0 * * 1", timezone=scheduler_fn.Timezone("UTC"), timeout_sec=540)
def runWeeklyReports(event: scheduler_fn.ScheduledEvent) -> None:  # noqa: N802
    """Reports the ISO week before the scheduled instant, and any earlier week that was missed."""
    dep = deployment()
    at = event.schedule_time
    owner = f"{dep.worker_id}:{event.job_name or 'manual'}"
    done = run(scheduler.catch_up(dep.storage, at, owner, dep.settings.report_catch_up_weeks))
    log.info("scheduled reports done: %s (for %s)", done or "none due", reports.previous_week(at).id)


# -- the sweeper (invariant 4) ------------------------------------------------------------------------
@scheduler_fn.on_schedule(
    schedule="* * * * *", timezone=scheduler_fn.Timezone("UTC"), timeout_sec=60, secrets=IMAGE_STORE_SECRETS
)
def sweepGenerationJobs(event: scheduler_fn.ScheduledEvent) -> None:  # noqa: N802
    run(sweep(deployment(), SWEEP_BUDGET_SECONDS))


@dataclass(frozen=True)
class Sweep:
    requeued: int
    failed: int
    ran: int
    webhooks: int


async def sweep(dep: Deployment, budget_seconds: float) -> Sweep:
    """Jobs whose invocation died are requeued (or failed and refunded); pending ones are run."""
    settings = dep.settings
    recovery = await jobs.recover_expired_jobs(dep.storage, utcnow(), max_attempts=settings.job_max_attempts)
    deadline = time.monotonic() + budget_seconds
    ran = 0
    while time.monotonic() < deadline and await run_one(dep):
        ran += 1
    sent = await _deliver_webhooks(dep)
    await dep.storage.purge_idempotency(utcnow() - timedelta(hours=settings.idempotency_retention_hours))
    result = Sweep(recovery.requeued, recovery.failed, ran, sent)
    if recovery.requeued or recovery.failed or ran:
        log.warning("sweep: %s", result)
    return result


async def _deliver_webhooks(dep: Deployment) -> int:
    secret = await signing_secret(dep.storage, dep.settings)
    return await Dispatcher(dep.storage, dep.settings, secret, dep.settings.public_url).deliver_due()
