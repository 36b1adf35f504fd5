"""/docs (Swagger UI) and /redoc, served whole by the app: nothing comes from a CDN or the internet.

The Swagger UI and ReDoc files are the ones the `fastapi-offline` package ships (Swagger UI under
the Apache 2.0 license, ReDoc under MIT, as its license file says); imagegen uses only its files,
read once and served from `/docs/assets/`, with FastAPI's own page builders pointed at them. The
Authorize button is the OpenAPI document's bearer scheme (api/openapi.py): paste a key there and
every "Try it out" sends `Authorization: Bearer <key>`. `/` leads to the console when the app has
one, else here.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from imagegen.domain.errors import NotFound

router = APIRouter(include_in_schema=False)
ASSETS = "/docs/assets"
MEDIA = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
CONSOLE = "/console"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request.app),
        title=f"{request.app.title} - API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.png",
        # No call to the online validator; the key pasted in Authorize survives a reload.
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_openapi_url(request.app),
        title=f"{request.app.title} - API",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/favicon.png",
        with_google_fonts=False,
    )


@router.get(ASSETS + "/{name}")
async def asset(name: str) -> Response:
    if name not in MEDIA:
        raise NotFound("No such documentation asset", name=name[:80])
    # The files change only with the package: let browsers keep them a day.
    return Response(_read(name), media_type=MEDIA[name], headers={"Cache-Control": "public, max-age=86400"})


@router.get("/")
async def home(request: Request) -> RedirectResponse:
    return RedirectResponse(CONSOLE if _has_console(request.app) else "/docs", status_code=307)


@cache
def _read(name: str) -> bytes:
    return files("fastapi_offline").joinpath("static", name).read_bytes()


def _openapi_url(app: FastAPI) -> str:
    return app.openapi_url or "/openapi.json"


def _has_console(app: FastAPI) -> bool:
    return any(getattr(route, "path", None) == CONSOLE for route in app.routes)
