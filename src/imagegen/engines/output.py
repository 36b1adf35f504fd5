"""The check every engine's output passes before it counts: an image, of the size that was paid for.

It is stored as PNG whatever the engine sent (the image store serves `<id>.png`). An image of
another size is refused unless the deployment allows resizing (see docs/engines.md, "Sizes").
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

from PIL import Image, ImageOps, UnidentifiedImageError

from imagegen.domain.catalog import parse_size
from imagegen.engines import errors

# Far above any size a catalog sells (1024x1792 is 1.8 M); a bigger header is a bomb or a bug.
MAX_PIXELS = 64 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def checked_png(data: bytes, size: str, *, resize: bool) -> bytes:
    """PNG bytes of exactly `size`, or EngineError (DEPLOYMENT: this deployment sent something else)."""
    wanted = parse_size(size)
    if data.startswith(PNG_SIGNATURE) and _whole_png_size(data) == wanted:
        return data  # stored byte for byte: every chunk arrived whole, as its encoder wrote it
    image = _decoded(data)
    if image.size != wanted:
        if not resize:
            got = f"{image.width}x{image.height}"
            raise errors.deployment(f"the engine returned a {got} image for a {size} request")
        # Cover, then crop the overflow evenly: an aspect change never distorts the picture.
        image = ImageOps.fit(image, wanted, Image.Resampling.LANCZOS)
    return _png(image)


def _whole_png_size(data: bytes) -> tuple[int, int]:
    """The size a PNG's header gives, once its chunks are checked without decoding its pixels: each
    chunk within the data and matching its CRC, the header first, image data present, the end chunk
    last with nothing after it. A truncated or damaged transfer fails here, at a small fraction of
    the cost of decoding: decoding the pixels costs about what the simulated models pay to draw them."""
    pos, end, seen = len(PNG_SIGNATURE), len(data), []
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body_end = pos + 8 + length
        if body_end + 4 > end:
            break
        (crc,) = struct.unpack_from(">I", data, body_end)
        if zlib.crc32(memoryview(data)[pos + 4 : body_end]) != crc:
            break
        seen.append(kind)
        pos = body_end + 4
        if kind == b"IEND":
            break
    if pos != end or len(seen) < 3 or seen[0] != b"IHDR" or seen[-1] != b"IEND" or b"IDAT" not in seen:
        raise errors.deployment("the engine's answer is not an image")
    width, height = struct.unpack_from(">II", data, len(PNG_SIGNATURE) + 8)
    if width * height > MAX_PIXELS:
        raise errors.deployment(f"the engine returned an image of {width}x{height} pixels")
    return width, height


def _decoded(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise errors.deployment(
                    f"the engine returned an image of {image.width}x{image.height} pixels"
                )
            image.load()  # decode it all: a truncated file fails here, not in a user's browser
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise errors.deployment("the engine's answer is not an image") from exc
    return image


def _png(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
