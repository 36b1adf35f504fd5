"""The simulated models: a set latency and failure rate, and a real PNG drawn from the spec."""

from __future__ import annotations

import hashlib
import math
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from imagegen.domain.catalog import ModelSettings, parse_size
from imagegen.domain.generation import GenerationSpec
from imagegen.models.base import ModelFailure

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]
Painter = Callable[[tuple[int, int], list[RGB], random.Random], Image.Image]

# Painting at a quarter of the size makes the drawing itself nearly free (0.1-0.7 ms at 512x512);
# most of the time goes to the PNG encoding, which grows with the pixel count whatever we draw.
SCALE = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

INK: RGB = (25, 20, 30)
PAPER: RGB = (246, 242, 232)
WHITE: RGB = (255, 255, 255)
NIGHT: RGB = (8, 4, 20)

PALETTES: dict[str, list[RGB]] = {
    "vibrant": [(230, 57, 70), (255, 183, 3), (42, 157, 143), (38, 70, 183), (244, 114, 182)],
    "monochrome": [(20, 20, 20), (75, 75, 75), (130, 130, 130), (185, 185, 185), (235, 235, 235)],
    "pastel": [(255, 209, 220), (204, 236, 239), (255, 241, 186), (213, 198, 237), (190, 227, 200)],
    "neon": [(57, 255, 20), (255, 20, 147), (0, 255, 255), (255, 240, 31), (191, 0, 255)],
    "vintage": [(112, 66, 20), (204, 153, 102), (153, 102, 51), (222, 196, 160), (85, 107, 47)],
}


class SimulatedModel:
    """Stands in for a real model: waits, sometimes fails, otherwise draws the spec.

    `failure_rate` and `latency_ms`, when given, override every model's own settings (they come
    from AI_FAILURE_RATE and IMAGEGEN_MODEL_LATENCY_MS).
    """

    def __init__(
        self,
        *,
        failure_rate: float | None = None,
        latency_ms: int | None = None,
        jitter: float = 0.25,
        rng: random.Random | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        _check_fraction("failure_rate", failure_rate)
        _check_fraction("jitter", jitter)
        if latency_ms is not None and latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
        self._failure_rate = failure_rate
        self._latency_ms = latency_ms
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._sleep = sleep
        # Several workers share one instance, and random.Random promises nothing about threads.
        self._lock = threading.Lock()
        self._drawing = threading.Lock()

    def generate(self, spec: GenerationSpec, settings: ModelSettings) -> bytes:
        delay, fails = self.roll(settings)
        if delay > 0:
            self._sleep(delay)
        if fails:
            raise ModelFailure(f"{spec.model} failed to generate the image (simulated)")
        # One drawing at a time: a drawing is Python holding the GIL, so two at once only take
        # turns, and every turn is also taken from the event loop and the database's threads; one
        # waiting on this lock holds no GIL. (The simulated wait above stays concurrent.)
        with self._drawing:
            return draw_png(spec)

    def roll(self, settings: ModelSettings) -> tuple[float, bool]:
        """Seconds to wait and whether this attempt fails."""
        latency_ms = settings.latency_ms if self._latency_ms is None else self._latency_ms
        rate = settings.failure_rate if self._failure_rate is None else self._failure_rate
        with self._lock:
            spread = self._rng.uniform(-self._jitter, self._jitter)
            fails = self._rng.random() < rate
        return latency_ms * (1 + spread) / 1000, fails


def _check_fraction(name: str, value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")


def draw_png(spec: GenerationSpec) -> bytes:
    """A PNG at `spec.size`, the same bytes for the same model, style, color and prompt."""
    width, height = parse_size(spec.size)
    small = (max(1, width // SCALE), max(1, height // SCALE))
    paint = PAINTERS.get(spec.style, _generic)
    image = paint(small, palette_of(spec.color), random.Random(seed_of(spec)))
    # Smooth across, repeated down: the 4-pixel vertical steps do not show at these sizes, and a
    # repeated row costs the encoder almost nothing (see _png).
    wide = image.convert("RGB").resize((width, image.height), Image.Resampling.BILINEAR)
    return _png(wide, height)


def seed_of(spec: GenerationSpec) -> int:
    key = "\0".join((spec.model, spec.style, spec.color, spec.prompt))
    return int.from_bytes(hashlib.sha256(key.encode()).digest(), "big")


def palette_of(color: str) -> list[RGB]:
    if color in PALETTES:
        return PALETTES[color]
    # Hashing the name alone keeps an unknown color's palette the same whatever the prompt.
    d = hashlib.sha256(color.encode()).digest()
    return [(d[i], d[i + 1], d[i + 2]) for i in range(0, 15, 3)]


def _png(image: Image.Image, height: int) -> bytes:
    """`image` (RGB) as a PNG `height` rows tall, each of its rows repeated down in turn.

    Written here rather than by Pillow, because we know what Pillow's encoder has to find out: each
    row of the painting goes out once with the "Sub" filter (each byte minus the one a pixel to the
    left, worked out by Pillow for the whole image in one pass), and each repetition with the "Up"
    filter, which makes it a row of zeros. That spares the encoder's per-row filter search, and
    halves the time of a 512x512 image (1.2-2.8 ms; 2.5-4.6 with Pillow's encoder at level 1).
    """
    width, rows = image.size
    line = 3 * width
    left = Image.new("RGB", image.size)  # each pixel's left neighbour (black left of the edge)
    left.paste(image.crop((0, 0, width - 1, rows)), (1, 0))
    sub = ImageChops.subtract_modulo(image, left).tobytes()
    again = b"\x02" + bytes(line)
    parts: list[bytes] = []
    for row in range(rows):
        copies = (row + 1) * height // rows - row * height // rows
        parts += (b"\x01", sub[row * line : (row + 1) * line], *([again] * (copies - 1)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
    # Level 1: about twice as fast as the default, for files ~1.5x larger.
    data = zlib.compress(b"".join(parts), 1)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# --- colors and shapes ---------------------------------------------------------------------------


def _rgb(values: Iterable[float]) -> RGB:
    r, g, b = (max(0, min(255, round(v))) for v in values)
    return (r, g, b)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return _rgb(x + (y - x) * t for x, y in zip(a, b, strict=True))


def _vary(color: RGB, rng: random.Random, spread: int) -> RGB:
    return _rgb(c + rng.uniform(-spread, spread) for c in color)


def _gradient(size: tuple[int, int], top: RGB, bottom: RGB) -> Image.Image:
    mask = Image.linear_gradient("L").resize(size)
    return ImageOps.colorize(mask, black=top, white=bottom)


def _box(size: tuple[int, int], rng: random.Random, smallest: float, largest: float) -> Box:
    """A square whose side is a random fraction of the shorter edge, inside the canvas."""
    width, height = size
    side = rng.uniform(smallest, largest) * min(width, height)
    x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
    return (x, y, x + side, y + side)


def _polygon(box: Box, rng: random.Random, corners: int) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    # Evenly spaced corners, nudged: random angles alone give slivers.
    step = 2 * math.pi / corners
    angles = [i * step + rng.uniform(-0.35, 0.35) * step for i in range(corners)]
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]


# --- styles --------------------------------------------------------------------------------------


def _realistic(size: tuple[int, int], palette: list[RGB], rng: random.Random) -> Image.Image:
    """Soft landscape: a sky gradient, a sun, and ridges that darken towards the viewer."""
    width, height = size
    image = _gradient(size, _mix(palette[0], WHITE, 0.5), palette[1])
    draw = ImageDraw.Draw(image)
    draw.ellipse(_box(size, rng, 0.1, 0.25), fill=_mix(palette[2], WHITE, 0.6))
    horizons = sorted(rng.uniform(0.35, 0.9) * height for _ in range(4))
    for i, horizon in enumerate(horizons):
        color = _mix(palette[(i + 2) % len(palette)], INK, 0.12 * i)
        draw.polygon(_ridge(size, horizon, rng), fill=color)
    return image.filter(ImageFilter.GaussianBlur(radius=max(1, min(size) / 100)))


def _ridge(size: tuple[int, int], base: float, rng: random.Random) -> list[tuple[float, float]]:
    width, height = size
    steps = 12
    top = [(width * i / steps, base + rng.uniform(-0.05, 0.05) * height) for i in range(steps + 1)]
    return [*top, (width, height), (0, height)]


def _anime(size: tuple[int, int], palette: list[RGB], rng: random.Random) -> Image.Image:
    """Flat cels with bold dark outlines, over a flat sky and ground."""
    width, height = size
    image = Image.new("RGB", size, _mix(palette[0], WHITE, 0.3))
    draw = ImageDraw.Draw(image)
    outline = max(2, min(size) // 60)
    draw.rectangle((0, rng.uniform(0.55, 0.75) * height, width, height), fill=palette[1])
    for _ in range(rng.randint(5, 9)):
        box = _box(size, rng, 0.15, 0.45)
        fill = rng.choice(palette[2:])
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill, outline=INK, width=outline)
        else:
            draw.polygon(_polygon(box, rng, rng.randint(3, 6)), fill=fill, outline=INK, width=outline)
    return image


def _oil_painting(size: tuple[int, int], palette: list[RGB], rng: random.Random) -> Image.Image:
    """Many thick overlapping strokes; the palette runs top to bottom so a composition shows."""
    width, height = size
    image = Image.new("RGB", size, _mix(palette[0], palette[1], 0.5))
    draw = ImageDraw.Draw(image)
    thick = max(3, min(size) // 12)
    angle = rng.uniform(0, math.pi)
    # Few broad strokes rather than many fine ones: busy detail makes the PNG slow to encode.
    for _ in range(width * height // 300):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        band = int(y / height * len(palette) + rng.uniform(-0.8, 0.8)) % len(palette)
        turn, length = angle + rng.gauss(0, 0.4), rng.uniform(1, 3) * thick
        end = (x + length * math.cos(turn), y + length * math.sin(turn))
        draw.line((x, y, *end), fill=_vary(palette[band], rng, 12), width=rng.randint(thick // 2, thick))
    return image


def _sketch(size: tuple[int, int], palette: list[RGB], rng: random.Random) -> Image.Image:
    """Thin dark lines on paper white: loose outlines drawn several times, and hatching."""
    image = Image.new("RGB", size, PAPER)
    draw = ImageDraw.Draw(image)
    inks = [_mix(c, INK, 0.7) for c in palette]
    for _ in range(rng.randint(5, 9)):
        box = _box(size, rng, 0.15, 0.5)
        ink = rng.choice(inks)
        for _ in range(3):
            draw.arc(_loosen(box, rng), rng.uniform(0, 90), rng.uniform(270, 360), fill=ink, width=1)
        if rng.random() < 0.5:
            _hatch(draw, box, ink, rng)
    return image


def _loosen(box: Box, rng: random.Random) -> Box:
    """The box shifted and grown a little, like a hand going over the same line again."""
    x0, y0, x1, y1 = box
    dx, dy, grow = rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(0, 2)
    return (x0 + dx - grow, y0 + dy - grow, x1 + dx + grow, y1 + dy + grow)


def _hatch(draw: ImageDraw.ImageDraw, box: Box, ink: RGB, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    gap = rng.uniform(2, 4)
    for i in range(int((x1 - x0) / gap)):
        x = x0 + i * gap
        draw.line((x, y1, x + (y1 - y0) / 3, y0 + (y1 - y0) / 2), fill=ink, width=1)


def _cyberpunk(size: tuple[int, int], palette: list[RGB], rng: random.Random) -> Image.Image:
    """A dark sky glowing at the horizon, a neon sun, a skyline, and a neon grid."""
    width, height = size
    horizon = rng.uniform(0.45, 0.6) * height
    glow = _mix(rng.choice(palette), NIGHT, 0.55)
    image = Image.new("RGB", size, NIGHT)
    image.paste(_gradient((width, max(1, round(horizon))), NIGHT, glow))
    draw = ImageDraw.Draw(image)
    sun = rng.uniform(0.15, 0.3) * width
    cx = rng.uniform(0.25, 0.75) * width
    draw.ellipse((cx - sun, horizon - 1.6 * sun, cx + sun, horizon + 0.4 * sun), fill=palette[1])
    _skyline(draw, size, horizon, palette, rng)
    _neon_grid(draw, size, horizon, rng.choice(palette), rng)
    return image


def _skyline(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    horizon: float,
    palette: list[RGB],
    rng: random.Random,
) -> None:
    width, height = size
    x = 0.0
    while x < width:
        w, top = rng.uniform(0.06, 0.15) * width, horizon - rng.uniform(0.05, 0.3) * height
        draw.rectangle((x, top, x + w, horizon), fill=(14, 8, 28))
        for _ in range(int(w * (horizon - top) / 40)):
            wx, wy = rng.uniform(x + 1, x + w - 2), rng.uniform(top + 1, horizon - 2)
            draw.point((wx, wy), fill=rng.choice(palette))
        x += w + rng.uniform(0, 0.03) * width


def _neon_grid(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], horizon: float, color: RGB, rng: random.Random
) -> None:
    width, height = size
    draw.rectangle((0, horizon, width, height), fill=(10, 0, 22))
    rows = rng.randint(10, 16)
    for i in range(1, rows + 1):  # squared spacing: rows crowd together towards the horizon
        y = horizon + (height - horizon) * (i / rows) ** 2
        draw.line((0, y, width, y), fill=color, width=1)
    vanish = rng.uniform(0.3, 0.7) * width
    for i in range(-12, 13):
        draw.line((vanish, horizon, vanish + i * width / 6, height), fill=color, width=1)
    draw.line((0, horizon, width, horizon), fill=_mix(color, WHITE, 0.5), width=2)


def _watercolor(size: tuple[int, int], palette: list[RGB], rng: random.Random) -> Image.Image:
    """Translucent irregular blobs that show through each other, then blurred like wet paint."""
    image = Image.new("RGB", size, PAPER)
    draw = ImageDraw.Draw(image, "RGBA")  # "RGBA" mode blends each fill onto what is below
    for _ in range(rng.randint(18, 30)):
        blob = _polygon(_box(size, rng, 0.1, 0.5), rng, rng.randint(6, 10))
        draw.polygon(blob, fill=(*rng.choice(palette), rng.randint(60, 140)))
    return image.filter(ImageFilter.GaussianBlur(radius=max(1, min(size) / 40)))


def _generic(size: tuple[int, int], palette: list[RGB], rng: random.Random) -> Image.Image:
    """For a style this module does not know: translucent shapes over a gradient."""
    image = _gradient(size, palette[0], palette[-1])
    draw = ImageDraw.Draw(image, "RGBA")
    for _ in range(rng.randint(6, 12)):
        box, fill = _box(size, rng, 0.1, 0.5), (*rng.choice(palette), 160)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    return image


PAINTERS: dict[str, Painter] = {
    "realistic": _realistic,
    "anime": _anime,
    "oil painting": _oil_painting,
    "sketch": _sketch,
    "cyberpunk": _cyberpunk,
    "watercolor": _watercolor,
}
