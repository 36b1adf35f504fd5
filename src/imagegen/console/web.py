"""The console's plumbing: its templates, the signed-in admin of each request, forms and CSRF.

Every page and action takes a `Console` (the `ConsoleDep` dependency): the session cookie is read,
its key read again through the API's own auth path (a revoked key is signed out here), and a POST's
form is parsed and its CSRF token checked before the route runs. Pages answer HTML; a refused
action (bad input, a missing user) answers its status with the error's message on the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, unquote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from imagegen.api.auth import RuntimeDep
from imagegen.api.inputs import principal_for_hash
from imagegen.clock import utcnow
from imagegen.console import charts, session
from imagegen.domain.errors import ImagegenError, Unauthenticated
from imagegen.domain.generation import iso
from imagegen.runtime import Runtime
from imagegen.service.keys import Principal

HERE = Path(__file__).parent
FLASH_COOKIE = "imagegen_console_flash"
MAX_FORM_BYTES = 64 * 1024
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(), trim_blocks=True
)
templates.globals.update(charts=charts, iso=iso)


def when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


templates.filters["when"] = when


class SignInNeeded(Exception):
    """No valid session: the browser goes to the sign-in page (with why, and the cookie cleared)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.message = message


class CsrfRefused(Exception):
    pass


@dataclass
class Console:
    request: Request
    runtime: Runtime
    principal: Principal
    session: session.Session
    secret: str
    form: dict[str, str]

    @property
    def csrf(self) -> str:
        return self.session.csrf_token(self.secret)

    def field(self, name: str) -> str:
        return self.form.get(name, "").strip()

    def page(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        flash = _cookie(self.request, FLASH_COOKIE)
        response = render(self.request, template, status, csrf=self.csrf, flash=flash, **values)
        if flash:
            clear_cookie(self.request, response, FLASH_COOKIE)
        return response

    def done(self, to: str, message: str) -> RedirectResponse:
        """After an action: back to a page (POST, redirect, GET), with a one-time message."""
        response = RedirectResponse(to, status_code=303)
        set_cookie(self.request, response, FLASH_COOKIE, message[:300], max_age=60)
        return response

    def refused(self, error: ImagegenError, template: str = "error.html") -> HTMLResponse:
        status = error.status if 400 <= error.status < 500 else 503
        return self.page(template, status, error=error.message)


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = templates.get_template(template).render(request=request, **values)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return forwarded == "https" or request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name,
        quote(value),
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    set_cookie(request, response, name, "", max_age=0)


async def console_secret(runtime: Runtime) -> str:
    """The key sessions are signed with: one per database, kept in its meta (every process agrees)."""
    cached: str | None = getattr(runtime, "_console_secret", None)
    if cached is None:
        cached = await runtime.storage.put_meta_once(session.SECRET_KEY, session.new_secret())
        runtime._console_secret = cached  # type: ignore[attr-defined]
    return cached


async def read_form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


async def signed_in(request: Request, runtime: RuntimeDep) -> Console:
    secret = await console_secret(runtime)
    now = utcnow()
    current = session.decode(_cookie(request, session.COOKIE), secret, now)
    if current is None:
        raise SignInNeeded()
    try:
        principal = await principal_for_hash(runtime.storage, current.key_hash)
    except Unauthenticated as exc:
        raise SignInNeeded("Your key was revoked or is unknown: you are signed out.") from exc
    if not principal.is_admin:
        raise SignInNeeded("The console needs an admin key.")
    form: dict[str, str] = {}
    if request.method == "POST":
        form = await read_form(request)
        if not current.valid_csrf(secret, form.get("csrf")):
            raise CsrfRefused()
    return Console(request, runtime, principal, current, secret, form)


def _cookie(request: Request, name: str) -> str | None:
    value = request.cookies.get(name)
    return None if value is None else unquote(value)


ConsoleDep = Annotated[Console, Depends(signed_in)]


def sign_in_redirect(request: Request, exc: SignInNeeded) -> Response:
    target = "/console/sign-in"
    if exc.message:
        target += "?why=" + quote(exc.message)
    response = RedirectResponse(target, status_code=303)
    if exc.message:
        clear_cookie(request, response, session.COOKIE)
    return response


def csrf_refused(request: Request) -> Response:
    return render(
        request,
        "error.html",
        403,
        error="This form's security token is missing or stale: reload the page and try again.",
    )
