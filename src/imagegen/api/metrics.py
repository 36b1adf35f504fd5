"""GET /metrics: the Prometheus text of every API process of this `serve`, and the queues."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from imagegen import metrics
from imagegen.api.auth import RuntimeDep
from imagegen.api.inputs import bearer_token
from imagegen.clock import utcnow
from imagegen.service.scrape import authorize_scrape, scrape

router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (an admin key or IMAGEGEN_METRICS_TOKEN)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "The Prometheus text format"}},
)
async def read_metrics(request: Request, runtime: RuntimeDep) -> Response:
    settings = runtime.settings
    token = bearer_token(request.headers.get("authorization"))
    await authorize_scrape(
        runtime.storage, token, metrics_token=settings.metrics_token, no_auth=settings.no_auth
    )
    return Response(await scrape(runtime.storage, utcnow()), media_type=metrics.CONTENT_TYPE)
