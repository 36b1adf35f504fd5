"""Hand-written fakes for the routing tests: a clock that sleeps by advancing, scripted engines."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image

from imagegen.engines import EngineError, EngineKind, EngineSettings, ImageRequest, Run
from imagegen.engines.binding import Deployment


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def png(size: tuple[int, int] = (512, 512), color: str = "teal") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


REQUEST = ImageRequest("req-1", "model-a", "a lighthouse", "watercolor", "pastel", "512x512")


class ScriptedSettings(EngineSettings):
    name: str = "a"


@dataclass
class ScriptedEngine:
    """Answers each call with the next outcome of its script (bytes, or an EngineError to raise)."""

    clock: FakeClock
    script: list[bytes | Exception]
    calls: list[float] = field(default_factory=list)
    latency: float = 0.0

    def generate(self, request: ImageRequest, run: Run) -> bytes:
        self.calls.append(self.clock.now)
        self.clock.now += self.latency
        outcome = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def close(self) -> None:
        pass


def deployment(name: str, **settings: object) -> Deployment:
    return Deployment("scripted", ScriptedSettings(name=name, **settings))  # type: ignore[arg-type]


class Engines:
    """engine_for: the scripted engine of each deployment, by its settings' name."""

    def __init__(self, clock: FakeClock, scripts: Mapping[str, list[bytes | Exception]]) -> None:
        self.by_name = {name: ScriptedEngine(clock, list(script)) for name, script in scripts.items()}

    def __call__(self, deployment: Deployment) -> ScriptedEngine:
        return self.by_name[deployment.settings.name]  # type: ignore[attr-defined]


def boom(message: str = "overloaded", **kwargs: object) -> EngineError:
    return EngineError(message, **kwargs)  # type: ignore[arg-type]


KIND = EngineKind(
    "scripted", ScriptedSettings, lambda settings, environ: ScriptedEngine(FakeClock(), [png()])
)
