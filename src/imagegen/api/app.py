"""The app factory: `create_app(settings)` builds everything in the lifespan, nothing at import time."""

from __future__ import annotations

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
