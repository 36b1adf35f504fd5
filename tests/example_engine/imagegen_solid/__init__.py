"""An example engine: a solid image in a color named by the request (or the settings' default).

Everything an engine needs is here: a settings model (validated when an operator binds a model to
it), an engine with `generate(request, run)` and `close()`, and the EngineKind its entry point
names. It checks `run.canceled` while it "works", as a real engine checks it between polls.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from PIL import Image, ImageColor
from pydantic import Field, field_validator

from imagegen.engines import EngineKind, EngineSettings, GenerationCanceled, ImageRequest, Run, errors


class SolidSettings(EngineSettings):
    default_color: str = Field("gray", description="when the request's color is not a CSS color name")
    work_s: float = Field(0.0, ge=0, le=60, description="how long it pretends to work")

    @field_validator("default_color")
    @classmethod
    def _css(cls, value: str) -> str:
        ImageColor.getrgb(value)  # ValueError: the binding is refused with this field named
        return value


class SolidEngine:
    def __init__(self, settings: SolidSettings, environ: Mapping[str, str]) -> None:
        self._settings = settings

    def generate(self, request: ImageRequest, run: Run) -> bytes:
        run.progress(0.0)
        run.wait(self._settings.work_s)
        if run.canceled:
            raise GenerationCanceled()
        if request.prompt == "refuse me":
            raise errors.permanent("the solid engine refuses this prompt")
        try:
            color = ImageColor.getrgb(request.color)
        except ValueError:
            color = ImageColor.getrgb(self._settings.default_color)
        out = io.BytesIO()
        width, height = (int(side) for side in self._settings.engine_size(request.size).split("x"))
        Image.new("RGB", (width, height), color).save(out, format="PNG")
        run.progress(1.0)
        return out.getvalue()

    def close(self) -> None:
        pass


ENGINE = EngineKind("solid", SolidSettings, SolidEngine, "a solid image in the request's color")
