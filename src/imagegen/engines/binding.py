"""Bindings: a catalog model served by an ordered list of deployments (engine + its settings).

Parsed and validated in one place, so the admin API, the CLI and an import all refuse the same
mistakes with the same list of problems (field + message, answered as a 422).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from imagegen.domain.errors import ImagegenError, InvalidBinding
from imagegen.domain.validation import Problem
from imagegen.engines.registry import Registry
from imagegen.engines.settings import EngineSettings

MAX_DEPLOYMENTS = 8


@dataclass(frozen=True)
class Deployment:
    engine: str
    settings: EngineSettings

    @property
    def key(self) -> str:
        """Names this engine + settings: identical deployments share cool-downs and concurrency."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return f"{self.engine}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def to_json(self) -> dict[str, Any]:
        """What storage keeps and an export carries (defaults left out, so they can improve)."""
        return {
            "engine": self.engine,
            "settings": self.settings.model_dump(mode="json", exclude_defaults=True),
        }


@dataclass(frozen=True)
class ModelBinding:
    model: str
    deployments: tuple[Deployment, ...]

    def to_json(self) -> dict[str, Any]:
        return {"deployments": [d.to_json() for d in self.deployments]}


def parse_binding(
    model: str, data: object, registry: Registry, *, sizes: Collection[str] | None = None
) -> ModelBinding:
    """A validated binding, or InvalidBinding listing every problem found.

    `sizes`, when given (the catalog's), is what a `size_map` may map from.
    """
    problems: list[Problem] = []
    items = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_DEPLOYMENTS:
        problems.append(Problem("deployments", f"must be a list of 1 to {MAX_DEPLOYMENTS} deployments"))
        items = []
    deployments = []
    for index, item in enumerate(items):
        deployment = _deployment(f"deployments[{index}]", item, registry, sizes, problems)
        if deployment is not None:
            deployments.append(deployment)
    if problems:
        raise InvalidBinding(f"Invalid binding for model '{model}'", model=model, problems=problems)
    return ModelBinding(model, tuple(deployments))


def _deployment(
    where: str, item: object, registry: Registry, sizes: Collection[str] | None, problems: list[Problem]
) -> Deployment | None:
    if not isinstance(item, dict) or set(item) - {"engine", "settings"}:
        problems.append(Problem(where, 'must be an object {"engine": name, "settings": {...}}'))
        return None
    name, raw = item.get("engine"), item.get("settings", {})
    if not isinstance(name, str):
        problems.append(Problem(f"{where}.engine", "must name an engine", tuple(registry.names())))
        return None
    try:
        kind = registry.kind(name)
    except ImagegenError as exc:
        problems.append(Problem(f"{where}.engine", exc.message, tuple(registry.names())))
        return None
    try:
        settings = kind.settings.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_problems(f"{where}.settings", exc))
        return None
    unknown = sorted(set(settings.size_map) - set(sizes)) if sizes is not None else []
    if unknown:
        problems.append(Problem(f"{where}.settings.size_map", f"not catalog sizes: {', '.join(unknown)}"))
    return Deployment(name, settings)


def _problems(where: str, exc: ValidationError) -> list[Problem]:
    found = []
    for error in exc.errors(include_url=False):
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        found.append(Problem(f"{where}{path}", message))
    return found
