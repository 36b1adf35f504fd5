"""Images the protocol servers answer with."""

from __future__ import annotations

import io

from PIL import Image


def png(width: int, height: int, color: str = "navy") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size
