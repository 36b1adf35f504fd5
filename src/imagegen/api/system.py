"""Health checks and generated images: no API key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from imagegen.api.auth import RuntimeDep
from imagegen.domain.errors import NotFound, StorageUnavailable

router = APIRouter(tags=["system"])
bench_router = APIRouter(tags=["system"], include_in_schema=False)


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    try:
        await runtime.storage.ping()
    except StorageUnavailable as exc:
        return JSONResponse({"status": "unavailable", "detail": exc.message}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/images/{image_id}.png",
    summary="A generated image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The PNG"},
        404: {"description": "No such image", "content": {"application/json": {}}},
    },
)
async def image(image_id: str, runtime: RuntimeDep) -> Response:
    png = await runtime.images.open(image_id)
    if png is None:
        raise NotFound("Image not found", id=image_id)
    # Images never change once written: let browsers and CDNs keep them.
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@bench_router.post("/_bench/noop")
async def noop(request: Request) -> JSONResponse:
    """Reads the body and answers 200, nothing else: what the framework itself costs for a POST.

    Served only with IMAGEGEN_BENCH_ROUTES=1; the benchmarks divide each route's figure by this one's.
    """
    await request.body()
    return JSONResponse({"status": "ok"})
