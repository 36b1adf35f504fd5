"""The engine registry: engines found by name through the `imagegen.engines` entry points.

imagegen's own engines register the same way (see pyproject.toml), so a separate package adds one
by declaring an entry point, without touching imagegen. An engine's module is imported the first
time its name is used, so a broken third-party package spoils only the bindings that name it.
"""

from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points

from imagegen.domain.errors import ImagegenError
from imagegen.engines.port import EngineKind

GROUP = "imagegen.engines"


class UnknownEngine(ImagegenError):
    code = "unknown_engine"
    status = 422

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown engine '{name}'; the known engines are: {', '.join(known)}", known=known)


class EngineUnavailable(ImagegenError):
    """An engine's entry point exists but does not load into an EngineKind."""

    code = "engine_unavailable"
    status = 422


class Registry:
    def __init__(
        self, points: dict[str, EntryPoint] | None = None, kinds: tuple[EngineKind, ...] = ()
    ) -> None:
        self._points = dict(points or {})
        self._kinds: dict[str, EngineKind] = {kind.name: kind for kind in kinds}
        self._lock = threading.Lock()

    @classmethod
    def discover(cls) -> Registry:
        """Every engine installed in this Python environment (read when called, never at import)."""
        return cls({point.name: point for point in entry_points(group=GROUP)})

    @classmethod
    def of(cls, *kinds: EngineKind) -> Registry:
        """A registry of the given engines only (tests, or a process that wants a fixed set)."""
        return cls(kinds=kinds)

    def names(self) -> list[str]:
        return sorted({*self._points, *self._kinds})

    def kind(self, name: str) -> EngineKind:
        with self._lock:
            if name not in self._kinds:
                self._kinds[name] = self._load(name)
            return self._kinds[name]

    def _load(self, name: str) -> EngineKind:
        point = self._points.get(name)
        if point is None:
            raise UnknownEngine(name, self.names())
        try:
            kind = point.load()
        except Exception as exc:  # a third-party package's import error must not take us down
            raise EngineUnavailable(
                f"engine '{name}' ({point.value}) failed to load: {type(exc).__name__}"
            ) from exc
        if not isinstance(kind, EngineKind) or kind.name != name:
            raise EngineUnavailable(f"engine '{name}' ({point.value}) is not an EngineKind named '{name}'")
        return kind
