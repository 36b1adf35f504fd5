"""What an engine is asked to make: a validated generation request, in the engine's terms."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imagegen.domain.catalog import parse_size
from imagegen.domain.generation import GenerationSpec


@dataclass(frozen=True)
class ImageRequest:
    """One generation as an engine sees it: `id` names it on the remote server (ComfyUI's
    client_id, Automatic1111's task id) and seeds it, so a retry draws the same picture."""

    id: str
    model: str
    prompt: str
    style: str
    color: str
    size: str  # the catalog's size, e.g. "1024x1024"; an engine maps it with its size_map

    @classmethod
    def from_spec(cls, request_id: str, spec: GenerationSpec) -> ImageRequest:
        return cls(request_id, spec.model, spec.prompt, spec.style, spec.color, spec.size)

    @property
    def dimensions(self) -> tuple[int, int]:
        return parse_size(self.size)

    @property
    def seed(self) -> int:
        """A 32-bit seed from the id: every engine takes one that fits, and it is stable across retries."""
        return int.from_bytes(hashlib.sha256(self.id.encode()).digest()[:4], "big")
