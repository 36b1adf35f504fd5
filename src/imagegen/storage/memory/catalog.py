"""The catalog in memory: models, styles, colors and sizes, and the configuration version.

Every edit bumps the version (parts.py), so that a create priced from a cached catalog is refused
as on the other adapters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.errors import InvalidInput
from imagegen.storage.memory.parts import MemoryParts
from imagegen.storage.memory.state import OPTION_KINDS, OptionRow


class MemoryCatalog(MemoryParts):
    async def catalog(self) -> Catalog:
        with self._lock:
            return self._catalog()

    async def config_version(self) -> str:
        with self._lock:
            return str(self._config_version)

    async def config_snapshot(self) -> tuple[str, Catalog]:
        with self._lock:
            return str(self._config_version), self._catalog()

    async def model_settings(self, name: str) -> ModelSettings | None:
        with self._lock:
            return self._state.models.get(name)

    async def put_model(self, model: ModelSettings) -> None:
        with self._lock:
            self._state.models[model.name] = _copy(model)
            self._config_version += 1

    async def update_model(
        self, name: str, change: Callable[[ModelSettings | None], ModelSettings]
    ) -> ModelSettings:
        with self._lock:
            current = self._state.models.get(name)
            updated = change(current)
            if updated != current:
                self._state.models[name] = _copy(updated)
                self._config_version += 1
            return updated

    async def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None:
        with self._lock:
            options = self._state.options[kind]
            current = options.get(name)
            if current is None and kind == "sizes" and cost is None:
                raise InvalidInput(f"A new size needs a cost: '{name}' is not in the catalog yet")
            keep = current.cost if current is not None else None
            options[name] = OptionRow(enabled, cost if cost is not None else keep)
            self._config_version += 1

    def _catalog(self) -> Catalog:
        """The enabled options, under the caller's lock."""
        s = self._state
        enabled = {kind: {n: o for n, o in s.options[kind].items() if o.enabled} for kind in OPTION_KINDS}
        return Catalog(
            dict(s.models),
            frozenset(enabled["styles"]),
            frozenset(enabled["colors"]),
            {name: int(option.cost or 0) for name, option in enabled["sizes"].items()},
        )


def _copy(model: ModelSettings) -> ModelSettings:
    """A copy: the caller's dicts are not the stored ones (as a database's row is not)."""
    return replace(model, deployments=copy.deepcopy(model.deployments), prices=dict(model.prices))
