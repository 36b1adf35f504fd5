"""The catalog: which models, styles, colors and sizes exist, and what each size costs."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class ModelSettings:
    """One catalog model as stored: what the simulated engine does with it, its binding, its prices.

    `deployments` is the stored binding: the ordered deployments, each `{"engine": name,
    "settings": {...}}` as `imagegen.engines.binding` validated and normalized them (the domain
    keeps the JSON; `engines.binding.parse_binding` turns it into engines). Empty: the model runs
    the simulated engine with `failure_rate` and `latency_ms`. `prices` maps a size to this
    model's price in credits, overriding the size's cost.
    """

    name: str
    failure_rate: float = 0.05
    latency_ms: int = 300
    enabled: bool = True
    deployments: tuple[Mapping[str, Any], ...] = ()
    prices: Mapping[str, int] = field(default_factory=dict)

    @property
    def bound(self) -> bool:
        return bool(self.deployments)

    def binding_json(self) -> dict[str, Any]:
        """The binding as the admin API, the CLI and parse_binding take it."""
        return {"deployments": [dict(d) for d in self.deployments]}


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelSettings]
    styles: frozenset[str]
    colors: frozenset[str]
    sizes: dict[str, int]  # size -> cost in credits

    def enabled_models(self) -> list[str]:
        return sorted(name for name, m in self.models.items() if m.enabled)

    @cached_property
    def allowed(self) -> dict[str, tuple[str, ...]]:
        """The values a request may name, per field, in the order error messages list them.

        Worked out once per catalog: a process prices every create from the same cached catalog.
        """
        return {
            "model": tuple(self.enabled_models()),
            "style": tuple(sorted(self.styles)),
            "color": tuple(sorted(self.colors)),
            "size": tuple(sorted(self.sizes, key=size_order)),
        }

    def cost_of(self, size: str, model: str | None = None) -> int:
        """What a request of this size costs: the model's own price when it sets one."""
        settings = self.models.get(model) if model is not None else None
        if settings is not None and size in settings.prices:
            return settings.prices[size]
        return self.sizes[size]


def size_order(size: str) -> tuple[int, str]:
    width, _, height = size.partition("x")
    try:
        return (int(width) * int(height), size)
    except ValueError:
        return (0, size)


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)


def model_record(model: ModelSettings) -> dict[str, Any]:
    """A model as an export/import record (the normalized dict every adapter's transfer uses)."""
    return {
        "collection": "models",
        "id": model.name,
        "failure_rate": model.failure_rate,
        "latency_ms": model.latency_ms,
        "enabled": model.enabled,
        "deployments": [copy.deepcopy(dict(d)) for d in model.deployments],
        "prices": dict(model.prices),
    }


def model_from_record(record: Mapping[str, Any]) -> ModelSettings:
    return ModelSettings(
        record["id"],
        float(record["failure_rate"]),
        int(record["latency_ms"]),
        bool(record["enabled"]),
        deployments=tuple(copy.deepcopy(record["deployments"])),
        prices=dict(record["prices"]),
    )


@dataclass(frozen=True)
class InitialData:
    """The case study's emulator data set, loaded on a new database's first start."""

    models: tuple[ModelSettings, ...] = (ModelSettings("model-a"), ModelSettings("model-b"))
    styles: tuple[str, ...] = (
        "realistic",
        "anime",
        "oil painting",
        "sketch",
        "cyberpunk",
        "watercolor",
    )
    colors: tuple[str, ...] = ("vibrant", "monochrome", "pastel", "neon", "vintage")
    sizes: dict[str, int] = field(default_factory=lambda: {"512x512": 1, "1024x1024": 3, "1024x1792": 4})
    users: dict[str, int] = field(default_factory=lambda: {"testUser1": 100, "testUser2": 10})


INITIAL_DATA = InitialData()
