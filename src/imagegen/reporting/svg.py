"""The building blocks of the page's charts: the palette, escaped SVG elements, axes and legends.

Hand-drawn SVG, inline in the page, so that it opens offline; text drawn from a document is
escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from imagegen.reporting import show

RED = "#dc2626"
RED_TINT = "#fee2e2"
RED_SOFT = "#f87171"
BLUE = "#2563eb"
VIOLET = "#7c3aed"
BAR = "#60a5fa"
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
TRACK = "#f3f4f6"


def _attr_value(value: object) -> str:
    if isinstance(value, float):
        return show.trim(value, 1).replace(",", "")
    return show.esc(value)


def el(tag: str, content: str | None = None, /, **attrs: object) -> str:
    """An SVG element; attribute names in snake_case become kebab-case. `content` is markup."""
    rendered = "".join(
        f' {name.rstrip("_").replace("_", "-")}="{_attr_value(value)}"'
        for name, value in attrs.items()
        if value is not None
    )
    return f"<{tag}{rendered}/>" if content is None else f"<{tag}{rendered}>{content}</{tag}>"


def label(x: float, y: float, text: str, **attrs: object) -> str:
    """Text drawn from data or numbers: escaped here."""
    return el("text", show.esc(text), x=x, y=y, **attrs)


def tooltip(text: str) -> str:
    return el("title", show.esc(text))


def chart(name: str, title: str, description: str, width: float, height: float, body: str) -> str:
    """An accessible inline SVG: its <title> and <desc> name it for screen readers."""
    return el(
        "svg",
        el("title", show.esc(title), id=f"{name}-title")
        + el("desc", show.esc(description), id=f"{name}-desc")
        + body,
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {int(width)} {int(height)}",
        role="img",
        aria_labelledby=f"{name}-title {name}-desc",
        class_="chart",
    )


def shorten(text: str, limit: int) -> str:
    # SVG text does not wrap: long keys are cut and given in full in a <title>.
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ticks(highest: float, *, floor: float, cap: float | None = None, whole: bool = False) -> list[float]:
    """0 and 3 to 5 round steps up to at least `highest` (steps of 1, 2, 2.5 or 5 times a power
    of 10); `whole` keeps the steps whole numbers, for counts."""
    highest = max(highest, floor)
    raw = highest / 4
    power = 10 ** math.floor(math.log10(raw))
    steps = (m * power for m in (1, 2, 2.5, 5, 10) if not whole or float(m * power).is_integer())
    step = next(s for s in steps if s >= raw)
    top = math.ceil(highest / step - 1e-9) * step
    if cap is not None and top > cap:
        top, step = cap, cap / 4
    return [round(i * step, 6) for i in range(round(top / step) + 1)]


def legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    """A row of (swatch markup at 0,0, label) pairs, left to right."""
    parts, cursor = [], x
    for swatch, text in items:
        parts.append(el("g", swatch, transform=f"translate({cursor:.0f} {y:.0f})"))
        parts.append(label(cursor + 22, y + 4, text, font_size=12, fill=INK))
        cursor += 22 + 6.4 * len(text) + 26
    return el("g", "".join(parts), class_="legend")


def line_swatch(colour: str) -> str:
    return el("line", x1=0, y1=0, x2=16, y2=0, stroke=colour, stroke_width=3) + el(
        "circle", cx=8, cy=0, r=3.5, fill=colour
    )


def dot_swatch(colour: str) -> str:
    return el("circle", cx=8, cy=0, r=5.5, fill=colour, stroke="#ffffff", stroke_width=2)


def box_swatch(colour: str) -> str:
    return el("rect", x=0, y=-6, width=16, height=12, rx=2, fill=colour)


def tick_swatch() -> str:
    return el("rect", x=0, y=-6, width=16, height=12, rx=2, fill=TRACK) + el(
        "line", x1=8, y1=-8, x2=8, y2=8, stroke=INK, stroke_width=2
    )
