"""The catalog's admin edits: options (styles, colors, sizes with their cost) and models."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Protocol

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.errors import InvalidInput
from imagegen.domain.generation import ID_RULE, valid_id
from imagegen.domain.queues import ModelQueue, including
from imagegen.ports import CatalogStore, Jobs


class QueueReader(CatalogStore, Jobs, Protocol):
    """The catalog, and the queue counted per model."""


CATALOG_KINDS = ("styles", "colors", "sizes")


async def set_option(
    storage: CatalogStore, kind: str, name: str, *, enabled: bool, cost: int | None
) -> Catalog:
    if kind not in CATALOG_KINDS:
        raise InvalidInput(f"Unknown catalog kind '{kind}'. Valid values: {', '.join(CATALOG_KINDS)}")
    if not valid_id(name.replace(" ", "_")) or name != name.strip():
        raise InvalidInput(f"Invalid name '{name[:80]}': 1-128 letters, digits, spaces and _ . @ : + -")
    if kind != "sizes" and cost is not None:
        raise InvalidInput("Only sizes have a cost")
    if kind == "sizes" and not _is_size(name):
        raise InvalidInput(f"Invalid size '{name}': WIDTHxHEIGHT, each from 1 to 4096")
    if cost is not None and cost <= 0:
        raise InvalidInput("cost must be a positive number of credits")
    await storage.put_option(kind, name, enabled=enabled, cost=cost)
    return await storage.catalog()


def _is_size(name: str) -> bool:
    width, sep, height = name.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        return False
    return all(1 <= int(side) <= 4096 for side in (width, height))


async def set_model(
    storage: CatalogStore,
    name: str,
    *,
    failure_rate: float | None = None,
    latency_ms: int | None = None,
    enabled: bool | None = None,
) -> ModelSettings:
    if not valid_id(name):
        raise InvalidInput(f"Invalid model name '{name[:80]}': {ID_RULE}")

    def change(stored: ModelSettings | None) -> ModelSettings:
        current = stored or ModelSettings(name)  # a new model: unbound, at the sizes' costs
        return replace(
            current,
            failure_rate=current.failure_rate if failure_rate is None else failure_rate,
            latency_ms=current.latency_ms if latency_ms is None else latency_ms,
            enabled=current.enabled if enabled is None else enabled,
        )

    return await storage.update_model(name, change)


async def model_queues(storage: QueueReader, now: datetime) -> list[ModelQueue]:
    """The queue per model: every catalog model (with zeros when idle) and any other model that
    still has jobs queued (one removed from the catalog, or one no running worker serves)."""
    catalog = await storage.catalog()
    return including(await storage.queues(now), catalog.models)
