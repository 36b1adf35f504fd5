"""The app factory: `create_app(settings)` builds everything in the lifespan, nothing at import time."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from imagegen import __version__
from imagegen.api import admin, case_study, catalog, errors, generations, reports, system, users
from imagegen.api.limits import BodySizeLimit
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
        runtime = await run_in_threadpool(Runtime.build, settings)
        app.state.runtime = runtime
        runtime.start()
        freeze_startup_heap()
        try:
            yield
        finally:
            await run_in_threadpool(runtime.stop)

    app = FastAPI(title="imagegen", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)
    for module in (system, generations, users, catalog, reports, admin, case_study):
        app.include_router(module.router)
    if settings.bench_routes:
        app.include_router(system.bench_router)
    return app


_heap_frozen = False


def freeze_startup_heap() -> None:
    """Moves what the process holds once it is ready to serve out of the garbage collector's sight.

    Python's full collections walk every container object; after start a server holds ~140,000 of
    them (modules, classes, FastAPI's and pydantic's schemas) that live as long as the process, and
    each walk stopped the event loop for 25-100 ms: the create route's p99 at a moderate load was
    that pause (measured: 120 ms, 20 ms once frozen; see bench/README.md). Frozen objects are never
    collected, so this runs once per process, after startup, on a heap just collected.
    """
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()
