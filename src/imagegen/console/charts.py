"""Small charts for the console's pages, drawn on the server as inline SVG (no script, no download)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def bars(
    values: Sequence[float],
    labels: Sequence[str],
    *,
    title: str,
    width: int = 360,
    height: int = 80,
    accent: Sequence[float] | None = None,
) -> Markup:
    """A bar per value (e.g. per five minutes), with `accent` (e.g. failures) drawn over each bar."""
    top = max([*values, 1.0])
    gap = 2
    slot = width / max(len(values), 1)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height + 14}" width="{width}" '
        f'height="{height + 14}" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i, value in enumerate(values):
        x = i * slot + gap / 2
        h = height * value / top
        label = escape(f"{labels[i]}: {_number(value)}")
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{height - h:.1f}" width="{slot - gap:.1f}" '
            f'height="{h:.1f}"><title>{label}</title></rect>'
        )
        if accent is not None and accent[i] > 0:
            a = height * accent[i] / top
            parts.append(
                f'<rect class="bar-accent" x="{x:.1f}" y="{height - a:.1f}" width="{slot - gap:.1f}" '
                f'height="{a:.1f}"></rect>'
            )
    if labels:
        parts.append(f'<text x="0" y="{height + 12}" class="axis">{escape(labels[0])}</text>')
        parts.append(
            f'<text x="{width}" y="{height + 12}" class="axis" text-anchor="end">{escape(labels[-1])}</text>'
        )
    parts.append(f'<text x="{width}" y="10" class="axis" text-anchor="end">max {_number(top)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
