"""Signing in to the console with an admin key, and out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from imagegen.api.auth import RuntimeDep
from imagegen.clock import utcnow
from imagegen.console import session
from imagegen.console.web import (
    ConsoleDep,
    _cookie,
    clear_cookie,
    console_secret,
    read_form,
    render,
    set_cookie,
)
from imagegen.domain.errors import Unauthenticated
from imagegen.service import authenticate, hash_key

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/sign-in")
async def sign_in_page(request: Request, runtime: RuntimeDep, why: str | None = None) -> Response:
    return await _form(request, runtime, 200, why[:300] if why else None)


async def _form(request: Request, runtime: RuntimeDep, status: int, error: str | None) -> Response:
    cookie, token = session.pre_session(await console_secret(runtime), utcnow())
    response = render(request, "sign_in.html", status, signin_token=token, error=error)
    set_cookie(
        request, response, session.PRE_COOKIE, cookie, max_age=int(session.PRE_LIFETIME.total_seconds())
    )
    return response


@router.post("/sign-in")
async def sign_in(request: Request, runtime: RuntimeDep) -> Response:
    secret = await console_secret(runtime)
    now = utcnow()
    form = await read_form(request)
    if not session.valid_pre_session(secret, _cookie(request, session.PRE_COOKIE), form.get("csrf"), now):
        return await _form(request, runtime, 403, "The sign-in form had expired: please try again.")
    key = form.get("key", "").strip()
    try:
        found = await authenticate(runtime.storage, key)
    except Unauthenticated as exc:
        message = "Enter an admin API key." if not key else f"{exc.message}: check the key and try again."
        return await _form(request, runtime, 401, message)
    if not found.is_admin:
        return await _form(request, runtime, 403, "This is a user's key: the console needs an admin key.")
    opened = session.open_session(hash_key(key), now)
    response = RedirectResponse("/console", status_code=303)
    lifetime = int(session.LIFETIME.total_seconds())
    set_cookie(request, response, session.COOKIE, session.encode(opened, secret), max_age=lifetime)
    clear_cookie(request, response, session.PRE_COOKIE)
    return response


@router.post("/sign-out")
async def sign_out(console: ConsoleDep) -> Response:
    response = RedirectResponse("/console/sign-in", status_code=303)
    clear_cookie(console.request, response, session.COOKIE)
    return response
