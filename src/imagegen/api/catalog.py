"""/v1/catalog: what can be ordered and what it costs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from imagegen.api.auth import PrincipalDep, RuntimeDep
from imagegen.api.errors import documented
from imagegen.domain.catalog import Catalog, size_order
from imagegen.settings import Settings

router = APIRouter(prefix="/v1/catalog", tags=["catalog"], responses=documented(401, 403))


class ModelOut(BaseModel):
    name: str
    failureRate: float  # noqa: N815
    latencyMs: int  # noqa: N815
    prices: dict[str, int] = Field(
        description="What each enabled size costs with this model: its own price, else the size's cost"
    )


class SizeOut(BaseModel):
    name: str
    cost: int


class CatalogOut(BaseModel):
    models: list[ModelOut]
    styles: list[str]
    colors: list[str]
    sizes: list[SizeOut]


def catalog_body(catalog: Catalog, settings: Settings) -> dict[str, Any]:
    """The catalog as clients see it: a model's figures are the ones in effect (env overrides win)."""
    return {
        "models": [
            {
                "name": m.name,
                "failureRate": _override(settings.ai_failure_rate, m.failure_rate),
                "latencyMs": _override(settings.model_latency_ms, m.latency_ms),
                "prices": {s: catalog.cost_of(s, m.name) for s in sorted(catalog.sizes, key=size_order)},
            }
            for m in sorted(catalog.models.values(), key=lambda m: m.name)
            if m.enabled
        ],
        "styles": sorted(catalog.styles),
        "colors": sorted(catalog.colors),
        "sizes": [{"name": s, "cost": catalog.sizes[s]} for s in sorted(catalog.sizes, key=size_order)],
    }


def _override(value: Any, stored: Any) -> Any:
    return stored if value is None else value


@router.get("", response_model=CatalogOut, summary="Enabled models, styles, colors, and sizes with prices")
async def get_catalog(runtime: RuntimeDep, _principal: PrincipalDep) -> dict[str, Any]:
    return catalog_body(await runtime.storage.catalog(), runtime.settings)
