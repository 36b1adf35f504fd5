"""imagegen's Firebase deployment: Cloud Functions (Python) over the Firestore adapter.

The same service layer, auth (Bearer API keys), bodies and errors as the SQL deployment's case-study
routes (both edges call imagegen.http, so bodies and errors cannot drift apart):

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

import functools
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from firebase_functions import https_fn, options, scheduler_fn

from imagegen import http, jobs, scheduler, service
from imagegen.clock import utcnow
from imagegen.config_cache import ConfigCache
from imagegen.domain import reports
from imagegen.domain.catalog import Catalog
from imagegen.domain.errors import (
    BodyTooLarge,
    ImagegenError,
    InvalidInput,
    StaleConfig,
    StorageUnavailable,
    Unauthenticated,
)
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.ids import new_id
from imagegen.models.simulated import SimulatedModel
from imagegen.ports import ImageStore
from imagegen.ratelimit import RateLimiter
from imagegen.settings import Settings
from imagegen.storage import FIRESTORE_SCHEME
from imagegen.storage.firestore import FirestoreStorage
from imagegen.storage.s3_images import open_image_store
from imagegen.webhooks import Dispatcher, signing_secret

log = logging.getLogger("imagegen.functions")
JSON = "application/json"
SWEEP_BUDGET_SECONDS = 45.0  # the sweeper runs every minute: leave it time to finish
STALE_ATTEMPTS = 5  # a create priced from a cache that went stale is redone this many times
# The image store's credentials (an S3-compatible bucket, e.g. Cloud Storage with HMAC keys): Secret
# Manager secrets, set with `firebase functions:secrets:set`, given to the functions that touch images.
IMAGE_STORE_SECRETS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
REGION = "us-central1"
options.set_global_options(region=REGION)


@dataclass
class Deployment:
    settings: Settings
    storage: FirestoreStorage
    config: ConfigCache  # the catalog and the keys, as this instance last read them
    model: SimulatedModel
    images: ImageStore
    limiter: RateLimiter
    worker_id: str


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
    storage = FirestoreStorage.from_url(url)
    return Deployment(
        settings=settings,
        storage=storage,
        config=ConfigCache(storage),
        model=SimulatedModel(failure_rate=settings.ai_failure_rate, latency_ms=settings.model_latency_ms),
        # Functions have only a local /tmp: set IMAGEGEN_IMAGE_STORE_URL to a bucket (docs/firebase.md).
        images=open_image_store(settings.image_store_url, settings.images_dir),
        limiter=RateLimiter(settings.rate_per_user_per_second, settings.rate_burst_per_user),
        worker_id=f"functions:{instance}:{os.getpid()}:{new_id(6)}",
    )


# -- HTTP plumbing: the same parsing, auth and error bodies as the FastAPI app (imagegen.http) --------
def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> https_fn.Response:
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return https_fn.Response(payload, status=status, headers={**(headers or {}), "content-type": JSON})


def _case_study(handler: Any) -> Any:
    """Turns imagegen's errors into the case-study routes' `{"error": ...}` bodies, as the API does."""

    @functools.wraps(handler)
    def wrapped(request: https_fn.Request) -> https_fn.Response:
        try:
            return handler(request)
        except ImagegenError as exc:
            if exc.status >= 500:
                log.error("%s %s: %s", request.method, request.path, exc.message)
            answer = http.case_study_error(exc)
            return _json(answer.body, answer.status, answer.headers)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            message = "An internal error occurred; nothing you sent caused it"
            return _json({"error": message, "code": "internal_error"}, 500)

    return wrapped


def _method_not_allowed() -> https_fn.Response:
    return _json({"error": "Method Not Allowed", "code": "method_not_allowed"}, 405)


def _principal(request: https_fn.Request, dep: Deployment) -> http.Principal:
    return http.principal_for(dep.storage, dep.settings, request.headers.get("authorization"))


def _json_body(request: https_fn.Request, dep: Deployment) -> Any:
    raw = request.get_data(cache=False)
    if len(raw) > dep.settings.max_body_bytes:
        raise BodyTooLarge(dep.settings.max_body_bytes)
    return http.parse_json(raw)


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
def createGenerationRequest(request: https_fn.Request) -> https_fn.Response:  # noqa: N802
    if request.method != "POST":
        return _method_not_allowed()
    dep = deployment()
    principal = _cached_principal(request, dep)
    body = _json_body(request, dep)
    key = request.headers.get("Idempotency-Key")
    if key is not None and len(key) > 255:
        raise InvalidInput("Idempotency-Key must be at most 255 characters")
    created, fresh, catalog = create_claimed(dep, principal, body, key)
    try:
        done = finish(dep, created, fresh, catalog)
    except Exception:
        # The debit is committed: whatever happens now, the client gets its request's id (202),
        # and the sweeper finishes the job once its lease runs out.
        log.exception("create %s: the job could not be finished in this invocation", created.id)
        done = created
    return _generation_response(request, dep, done)


def _cached_principal(request: https_fn.Request, dep: Deployment) -> http.Principal:
    """The caller, from the instance's key cache when it is there (checked by the debit, see above)."""
    if dep.settings.no_auth:
        return http.ADMIN
    token = http.bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthenticated("Missing API key: send 'Authorization: Bearer <key>'")
    key_hash = service.hash_key(token)
    key = dep.config.key(key_hash) or dep.config.lookup(key_hash)
    if key is None:
        raise Unauthenticated("Unknown or revoked API key")
    return http.Principal(key.user_id, key_hash)


def create_claimed(
    dep: Deployment, principal: http.Principal, body: Any, key: str | None
) -> tuple[GenerationRequest, bool, Catalog]:
    """Validates and prices from the cached catalog, then debits and creates the request running
    under this instance's lease; redone with fresh values if the configuration changed meanwhile.

    Returns (request, whether this call created it, the catalog it was priced from).
    """
    settings = dep.settings
    for _ in range(STALE_ATTEMPTS):
        version, catalog = dep.config.snapshot() or dep.config.refresh()
        now = utcnow()
        try:
            new = service.prepare_generation(
                catalog,
                body,
                max_prompt_length=settings.max_prompt_length,
                now=now,
                idempotency_key=key,
                authorize=http.create_guard(dep.limiter, principal),
                allow_private_webhooks=settings.webhook_allow_private,
                max_in_flight=settings.max_in_flight_per_user,
            )
        except InvalidInput:
            # Refused by the cached catalog: an option added or enabled since shows only in a fresh one.
            if dep.storage.config_version() == version:
                raise
            dep.config.refresh()
            continue
        lease = jobs.lease_until(now, settings.job_lease_seconds)
        try:
            created, fresh = dep.storage.debit_and_claim(new, dep.worker_id, lease, version)
        except StaleConfig:
            dep.config.refresh()
            if principal.key_hash is not None and dep.config.lookup(principal.key_hash) is None:
                raise Unauthenticated("Unknown or revoked API key") from None
            continue
        return created, fresh, catalog
    raise StorageUnavailable("the catalog kept changing during this create; try again")


def finish(dep: Deployment, created: GenerationRequest, fresh: bool, catalog: Catalog) -> GenerationRequest:
    """Runs the job this invocation created (it holds its lease), or waits for a replayed one."""
    if fresh:
        model = catalog.models.get(created.model)
        outcome = jobs.run_job(
            dep.storage, dep.model, dep.images, created, dep.worker_id, known_settings=model
        )
        if outcome.status == "completed":
            # As written by the completion: no need to read it back.
            return replace(
                created, status=Status.COMPLETED, image_url=outcome.image_url, completed_at=utcnow()
            )
    return run_until_done(dep, created.id, dep.settings.wait_timeout_seconds, created)


def run_until_done(
    dep: Deployment, request_id: str, timeout: float, current: GenerationRequest
) -> GenerationRequest:
    """Runs queued jobs, oldest first, in this invocation until `request_id` is terminal (or time is up).

    For a replayed Idempotency-Key (its first invocation runs it) or a job that was handed back to
    the queue; an older job met first is run too (its own invocation then finds it done). Answers
    the request as last read if the database cannot be reached meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = service.get_generation(dep.storage, request_id)
            if current.status.terminal or time.monotonic() >= deadline:
                return current
            ran = run_one(dep)
        except StorageUnavailable:
            log.warning("create %s: the database is unavailable; answering 202", request_id)
            return current
        if not ran:
            time.sleep(0.05)  # ours is running elsewhere (its first invocation, or the sweeper)


def run_one(dep: Deployment) -> bool:
    now = utcnow()
    job = dep.storage.claim_job(dep.worker_id, now, jobs.lease_until(now, dep.settings.job_lease_seconds))
    if job is None:
        return False
    jobs.run_job(dep.storage, dep.model, dep.images, job, dep.worker_id)
    return True


def _generation_response(
    request: https_fn.Request, dep: Deployment, done: GenerationRequest
) -> https_fn.Response:
    status, body = http.generation_answer(done, dep.settings.public_url or functions_base_url(request))
    return _json(body, status)


# -- getUserCredits ----------------------------------------------------------------------------------
@https_fn.on_request()
@_case_study
def getUserCredits(request: https_fn.Request) -> https_fn.Response:  # noqa: N802
    if request.method != "GET":
        return _method_not_allowed()
    dep = deployment()
    principal = _principal(request, dep)
    user_id = request.args.get("userId")
    if not user_id:
        raise InvalidInput("Missing required query parameter: userId")
    service.check_user_id(user_id)
    principal.may_act_for(user_id)
    user, page = service.get_credits(
        dep.storage,
        user_id,
        limit=http.page_size(request.args.get("limit"), dep.settings),
        cursor=request.args.get("cursor") or None,
    )
    return _json(http.credits_answer(user, page))


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
    png = deployment().images.open(name.removesuffix(".png")) if name.endswith(".png") else None
    if png is None:
        return _json({"error": "Image not found", "code": "not_found"}, 404)
    return https_fn.Response(png, status=200, headers={"content-type": "image/png"})


# -- reports -----------------------------------------------------------------------------------------
@https_fn.on_request(timeout_sec=300)
@_case_study
def scheduleWeeklyReport(request: https_fn.Request) -> https_fn.Response:  # noqa: N802
    """The case study's third curl: runs a report now and returns it (admin key)."""
    if request.method not in ("GET", "POST"):
        return _method_not_allowed()
    dep = deployment()
    _principal(request, dep).require_admin()
    now = utcnow()
    period = service.parse_period(request.args.get("week") or None, now=now)
    return _json(service.run_report(dep.storage, period, now))


@scheduler_fn.on_schedule(schedule="0 0 * * 1", timezone=scheduler_fn.Timezone("UTC"), timeout_sec=540)
def runWeeklyReports(event: scheduler_fn.ScheduledEvent) -> None:  # noqa: N802
    """Reports the ISO week before the scheduled instant, and any earlier week that was missed."""
    dep = deployment()
    at = event.schedule_time
    owner = f"{dep.worker_id}:{event.job_name or 'manual'}"
    done = scheduler.catch_up(dep.storage, at, owner, dep.settings.report_catch_up_weeks)
    log.info("scheduled reports done: %s (for %s)", done or "none due", reports.previous_week(at).id)


# -- the sweeper (invariant 4) ------------------------------------------------------------------------
@scheduler_fn.on_schedule(
    schedule="* * * * *", timezone=scheduler_fn.Timezone("UTC"), timeout_sec=60, secrets=IMAGE_STORE_SECRETS
)
def sweepGenerationJobs(event: scheduler_fn.ScheduledEvent) -> None:  # noqa: N802
    sweep(deployment(), SWEEP_BUDGET_SECONDS)


@dataclass(frozen=True)
class Sweep:
    requeued: int
    failed: int
    ran: int
    webhooks: int


def sweep(dep: Deployment, budget_seconds: float) -> Sweep:
    """Jobs whose invocation died are requeued (or failed and refunded); pending ones are run."""
    settings = dep.settings
    recovery = jobs.recover_expired_jobs(dep.storage, utcnow(), max_attempts=settings.job_max_attempts)
    deadline = time.monotonic() + budget_seconds
    ran = 0
    while time.monotonic() < deadline and run_one(dep):
        ran += 1
    sent = _deliver_webhooks(dep)
    dep.storage.purge_idempotency(utcnow() - timedelta(hours=settings.idempotency_retention_hours))
    result = Sweep(recovery.requeued, recovery.failed, ran, sent)
    if recovery.requeued or recovery.failed or ran:
        log.warning("sweep: %s", result)
    return result


def _deliver_webhooks(dep: Deployment) -> int:
    dispatcher = Dispatcher(
        dep.storage, dep.settings, signing_secret(dep.storage, dep.settings), dep.settings.public_url
    )
    try:
        return dispatcher.deliver_due()
    finally:
        dispatcher.client.close()
