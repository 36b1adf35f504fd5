"""The simulated engine: today's simulated models (models/simulated.py) behind the engine port.

It waits its latency (a cancel cuts the wait short), fails at its rate, and otherwise draws the
same deterministic PNG as `SimulatedModel`. Its failures are permanent by default, as the simulated
models' are today (the job fails at once); `failure: transient` makes them retried and failed over,
which is how the routing is exercised without a GPU.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from imagegen.domain.catalog import ModelSettings
from imagegen.domain.generation import GenerationSpec
from imagegen.engines.errors import EngineError, Failure, GenerationCanceled
from imagegen.engines.port import EngineKind
from imagegen.engines.request import ImageRequest
from imagegen.engines.run import Run
from imagegen.engines.settings import EngineSettings
from imagegen.models.simulated import SimulatedModel, draw_png

# One drawing at a time per process, as SimulatedModel does: a drawing holds the GIL, so two at once
# only take turns, and every turn is also taken from the event loop and the database's threads.
_DRAWING = threading.Lock()


class SimulatedSettings(EngineSettings):
    failure_rate: float = Field(0.05, ge=0, le=1)
    latency_ms: int = Field(300, ge=0, le=600_000)
    jitter: float = Field(0.25, ge=0, le=1)
    failure: Literal["permanent", "transient"] = "permanent"


class SimulatedEngine:
    def __init__(
        self, settings: SimulatedSettings, environ: Mapping[str, str], rng: random.Random | None = None
    ) -> None:
        self._settings = settings
        self._model = SimulatedModel(jitter=settings.jitter, rng=rng)

    def generate(self, request: ImageRequest, run: Run) -> bytes:
        s = self._settings
        delay, fails = self._model.roll(ModelSettings(request.model, s.failure_rate, s.latency_ms))
        run.wait(delay)
        if run.canceled:
            raise GenerationCanceled()
        if fails:
            failure = Failure.TRANSIENT if s.failure == "transient" else Failure.PERMANENT
            raise EngineError(f"{request.model} failed to generate the image (simulated)", failure)
        size = s.engine_size(request.size)
        with _DRAWING:
            return draw_png(
                GenerationSpec("", request.model, request.style, request.color, size, request.prompt)
            )

    def close(self) -> None:
        pass


ENGINE = EngineKind("simulated", SimulatedSettings, SimulatedEngine, "imagegen's simulated models")
