"""/v1/catalog: what can be ordered and what it costs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from imagegen.api.auth import PrincipalDep, RuntimeDep
from imagegen.domain.catalog import Catalog, size_order

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])


class ModelOut(BaseModel):
    name: str
    failureRate: float  # noqa: N815
    latencyMs: int  # noqa: N815


class SizeOut(BaseModel):
    name: str
    cost: int


class CatalogOut(BaseModel):
    models: list[ModelOut]
    styles: list[str]
    colors: list[str]
    sizes: list[SizeOut]


def catalog_body(catalog: Catalog) -> dict[str, Any]:
    return {
        "models": [
            {"name": m.name, "failureRate": m.failure_rate, "latencyMs": m.latency_ms}
            for m in sorted(catalog.models.values(), key=lambda m: m.name)
            if m.enabled
        ],
        "styles": sorted(catalog.styles),
        "colors": sorted(catalog.colors),
        "sizes": [{"name": s, "cost": catalog.sizes[s]} for s in sorted(catalog.sizes, key=size_order)],
    }


@router.get("", response_model=CatalogOut, summary="Enabled models, styles, colors, and sizes with prices")
async def get_catalog(runtime: RuntimeDep, _principal: PrincipalDep) -> dict[str, Any]:
    return catalog_body(await run_in_threadpool(runtime.storage.catalog))
