"""The engine port: turn a validated request into image bytes, within a run.

An engine is built once per deployment and called from several worker threads at once, so it must
be thread-safe (the built-in ones keep one httpx client and no per-call state on self). It checks
`run.canceled` while it waits and stops the remote work where the protocol allows; it reports
`run.progress(fraction)` where the protocol tells; it raises `EngineError` for every failure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from imagegen.engines.request import ImageRequest
from imagegen.engines.run import Run
from imagegen.engines.settings import EngineSettings


class Engine(Protocol):
    def generate(self, request: ImageRequest, run: Run) -> bytes:
        """The image (PNG, JPEG or WebP bytes), or EngineError; GenerationCanceled once canceled."""
        ...

    def close(self) -> None:
        """Releases connections; the engine is not used afterwards."""
        ...


S = TypeVar("S", bound=EngineSettings)


@dataclass(frozen=True)
class EngineKind(Generic[S]):
    """What an `imagegen.engines` entry point names: an engine's settings model and its builder.

    `build(settings, environ)` makes an engine for one deployment; `environ` is the worker's
    environment, where the deployment's `api_key_env` names its key.
    """

    name: str
    settings: type[S]
    build: Callable[[S, Mapping[str, str]], Engine]
    description: str = ""
