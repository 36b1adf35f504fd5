"""The port every image engine implements.

A real model (an HTTP API, a local diffusion model) plugs in by implementing the one method of
`ImageModel`: turn a validated spec into PNG bytes, or raise `ModelFailure`. It is synchronous:
each worker calls it on a thread (`asyncio.to_thread`), several at once, so an implementation must
be thread-safe.
"""

from __future__ import annotations

from typing import Protocol

from imagegen.domain.catalog import ModelSettings
from imagegen.domain.generation import GenerationSpec


class ModelFailure(Exception):
    """The model failed to produce an image: the job is failed and refunded."""


class ImageModel(Protocol):
    def generate(self, spec: GenerationSpec, settings: ModelSettings) -> bytes:
        """PNG bytes at `spec.size`, or raise ModelFailure."""
        ...
