"""The app factory: `create_app(settings)` builds everything in the lifespan, nothing at import time."""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from imagegen import __version__, console
from imagegen.api import admin, case_study, catalog, errors, generations, openapi, reports, system, users
from imagegen.api.limits import RequestLimits
from imagegen.runtime import Runtime
from imagegen.settings import Settings

DESCRIPTION = """imagegen sells AI image generation for credits: a credit ledger with atomic debits and
refunds, generation jobs on pluggable models, and weekly reports with anomaly detection.

Authenticate with `Authorization: Bearer <key>`. A user key acts only on its own user; an admin key on all.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.build(settings)
        app.state.runtime = runtime
        await runtime.start()
        settle_for_serving()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="imagegen", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(
        RequestLimits, max_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout_seconds
    )
    errors.install(app)
    openapi.install(app, settings)
    for module in (system, generations, users, catalog, reports, admin, case_study):
        app.include_router(module.router)
    console.install(app)
    if settings.bench_routes:
        app.include_router(system.bench_router)
    return app


GIL_SWITCH_INTERVAL = 0.0005  # seconds; Python's default is 0.005
# Young collections after this many more container objects allocated than freed (Python's default:
# 700); the older generations keep Python's ratios (10, 10).
GC_YOUNG_THRESHOLD = 25_000
_settled = False


def settle_for_serving() -> None:
    """Once per process, when it is ready to serve: freeze the startup heap, collect young objects
    less often, hand the GIL on sooner.

    Frozen: Python's full collections walk every container object; after start a server holds
    ~140,000 of them (modules, classes, FastAPI's and pydantic's schemas) that live as long as the
    process, and each walk stopped the event loop for 25-100 ms: the create route's p99 at a
    moderate load was that pause (SQLite: 120 ms, 20-26 ms once frozen). Frozen objects are never
    collected, hence once, on a heap just collected.

    The young threshold: Python collects its youngest generation whenever the objects allocated
    exceed those freed by 700. A server with 64 requests in flight swings by more than that as
    requests start and end, though it makes almost no cyclic garbage (the collections over a second
    of creates found none): the API processes ran ~200 young and ~17 full collections a second
    each, ~8 % of their time (PostgreSQL, creates at saturation, timed with gc.callbacks). At
    25,000 they ran none in minutes of the same load; cycles are still collected, after 25,000
    objects instead of 700.

    The switch interval: a thread that waits for the GIL (the group-commit writer after each
    PostgreSQL round trip, the thread pool's handlers) gets it when its holder blocks or after
    the interval. With the event loop busy, Python's 5 ms made each round trip of a create's debit
    cost up to 5 ms: PostgreSQL creates took 11 ms at a light load, 4 ms with 0.5 ms (and the
    saturated rate rose ~10 %).
    """
    global _settled
    if not _settled:
        _settled = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
