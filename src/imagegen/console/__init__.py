"""The operator's console at /console: server-rendered pages over the service layer (docs/console.md)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from imagegen.console import admin, operations, signin
from imagegen.console.web import HERE, CsrfRefused, SignInNeeded, csrf_refused, sign_in_redirect


def install(app: FastAPI) -> None:
    async def _sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInNeeded)
        return sign_in_redirect(request, exc)

    async def _csrf(request: Request, exc: Exception) -> Response:
        return csrf_refused(request)

    app.add_exception_handler(SignInNeeded, _sign_in)
    app.add_exception_handler(CsrfRefused, _csrf)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for module in (signin, operations, admin):
        app.include_router(module.router)
