"""A finding's recent weeks with the band it left: one small inline SVG per finding.

The detector stores, on each finding, the metric's value in every baseline week and in the period
(`history`), the band of ordinary values (`lower`, `upper`; None on a side that never alarms) and,
for a drift or level shift, the week it started (`since`). The chart draws exactly those numbers:
the weeks as a line, the band as a shaded stripe, this week's point in red, and the weeks since
the change began tinted. Everything from the document is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

WIDTH, HEIGHT = 560, 150
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 14, 30
BAND = "#dcfce7"
BAND_EDGE = "#86efac"
LINE = "#2563eb"
RED = "#dc2626"
TINT = "#fef3c7"
INK = "#1f2937"
MUTED = "#6b7280"

AMOUNTS = {"totalRequests", "totalCreditsSpent"}
LABELS = {
    "totalRequests": "requests",
    "totalCreditsSpent": "credits spent",
    "creditsPerRequest": "credits per completed request",
    "successRate": "success rate",
    "failureRate": "failure rate",
    "share": "share of its dimension",
}


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _shown(metric: str, value: float) -> str:
    if metric in ("successRate", "failureRate", "share"):
        return f"{value:.1f}%"
    if metric == "creditsPerRequest":
        return f"{value:.2f}"
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def _week_labels(report: Mapping[str, Any], count: int) -> list[str]:
    """The start date of each charted week, the period last."""
    try:
        start = datetime.fromisoformat(str(report.get("periodStart")).replace("Z", "+00:00"))
    except ValueError:
        return [f"-{count - 1 - i}w" if i < count - 1 else "this week" for i in range(count)]
    return [f"{start - timedelta(weeks=count - 1 - i):%d %b}" for i in range(count)]


def band_chart(anomaly: Mapping[str, Any], report: Mapping[str, Any], name: str) -> str:
    """The SVG for one finding, or "" when it carries no history (an older report)."""
    values = (
        [_finite(v) for v in anomaly.get("history") or []] if isinstance(anomaly.get("history"), list) else []
    )
    if len(values) < 2 or values[-1] is None:
        return ""
    metric = str(anomaly.get("metric") or "")
    lower, upper = _finite(anomaly.get("lower")), _finite(anomaly.get("upper"))
    expected = _finite(anomaly.get("expected"))
    known = [v for v in values if v is not None]
    extent = [*known, *(v for v in (lower, upper, expected) if v is not None)]
    low, high = min(extent), max(extent)
    if metric in ("successRate", "failureRate", "share"):
        low, high = max(0.0, low), min(100.0, high)
    pad = (high - low) * 0.08 or max(abs(high) * 0.1, 1.0)
    low, high = low - pad, high + pad
    if metric in AMOUNTS or metric == "creditsPerRequest":
        low = max(low, 0.0)
    step = (WIDTH - LEFT - RIGHT) / (len(values) - 1)
    bottom = HEIGHT - BOTTOM

    def x(i: int) -> float:
        return LEFT + step * i

    def y(value: float) -> float:
        return bottom - (bottom - TOP) * (value - low) / (high - low)

    parts = [_since_tint(anomaly, report, len(values), x, step)]
    band_top, band_bottom = y(upper if upper is not None else high), y(lower if lower is not None else low)
    parts.append(
        f'<rect class="band" x="{LEFT:.1f}" y="{band_top:.1f}" width="{WIDTH - LEFT - RIGHT:.1f}" '
        f'height="{max(band_bottom - band_top, 0.5):.1f}" fill="{BAND}"/>'
    )
    for edge in (lower, upper):
        if edge is not None:
            parts.append(
                f'<line x1="{LEFT}" y1="{y(edge):.1f}" x2="{WIDTH - RIGHT}" y2="{y(edge):.1f}" '
                f'stroke="{BAND_EDGE}" stroke-width="1"/>'
                f'<text x="{LEFT - 6}" y="{y(edge) + 4:.1f}" font-size="10" fill="{MUTED}" '
                f'text-anchor="end">{_esc(_shown(metric, edge))}</text>'
            )
    if expected is not None:
        parts.append(
            f'<line class="expected" x1="{LEFT}" y1="{y(expected):.1f}" x2="{WIDTH - RIGHT}" '
            f'y2="{y(expected):.1f}" stroke="{INK}" stroke-width="1" stroke-dasharray="4 3"/>'
        )
    parts.append(_line(values, x, y))
    parts += [_point(metric, values, i, x, y) for i in range(len(values)) if values[i] is not None]
    parts.append(_axis(_week_labels(report, len(values)), x))
    title = f"{LABELS.get(metric, metric)}: the last {len(values)} weeks and the band of ordinary values"
    description = (
        f"This week {_shown(metric, values[-1])}; expected {_shown(metric, expected)}"
        if expected is not None
        else f"This week {_shown(metric, values[-1])}"
    )
    if lower is not None or upper is not None:
        edges = " to ".join(_shown(metric, v) if v is not None else "no limit" for v in (lower, upper))
        description += f"; ordinary band {edges}."
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'class="chart band-chart" aria-labelledby="{name}-title {name}-desc">'
        f'<title id="{name}-title">{_esc(title)}</title><desc id="{name}-desc">{_esc(description)}</desc>'
        + "".join(parts)
        + "</svg>"
    )


def _since_tint(
    anomaly: Mapping[str, Any], report: Mapping[str, Any], count: int, x: Any, step: float
) -> str:
    """The weeks of a drift or level shift, from its first week to the period."""
    since = anomaly.get("since")
    if not since:
        return ""
    ids = _week_ids(report, count)
    if since not in ids:
        return ""
    first = ids.index(since)
    left = x(first) - step / 2
    return (
        f'<rect class="since" x="{max(left, LEFT - 4):.1f}" y="{TOP - 6}" '
        f'width="{x(count - 1) + step / 2 - max(left, LEFT - 4):.1f}" height="{HEIGHT - BOTTOM - TOP + 6}" '
        f'fill="{TINT}"><title>since {_esc(since)}</title></rect>'
    )


def _week_ids(report: Mapping[str, Any], count: int) -> list[str]:
    """The ids the weeks would have as reports: ISO weeks when the period is one."""
    try:
        start = datetime.fromisoformat(str(report.get("periodStart")).replace("Z", "+00:00"))
    except ValueError:
        return []
    ids = []
    for i in range(count):
        monday = start - timedelta(weeks=count - 1 - i)
        if monday.weekday() == 0 and (monday.hour, monday.minute, monday.second) == (0, 0, 0):
            year, week, _ = monday.isocalendar()
            ids.append(f"{year}-W{week:02d}")
        else:
            ids.append(f"{monday:%Y-%m-%d}..{monday + timedelta(weeks=1):%Y-%m-%d}")
    return ids


def _line(values: Sequence[float | None], x: Any, y: Any) -> str:
    """The weeks joined, a gap where a week had nothing to measure."""
    runs: list[list[str]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            runs.append([])
        else:
            runs[-1].append(f"{x(i):.1f},{y(value):.1f}")
    return "".join(
        f'<polyline points="{" ".join(run)}" fill="none" stroke="{LINE}" stroke-width="2"/>'
        for run in runs
        if len(run) > 1
    )


def _point(metric: str, values: Sequence[float | None], i: int, x: Any, y: Any) -> str:
    value = values[i]
    assert value is not None
    current = i == len(values) - 1
    colour, radius = (RED, 5.5) if current else (LINE, 3)
    css = ' class="this-week"' if current else ""
    label = (
        f'<text x="{x(i) - 8:.1f}" y="{y(value) - 9:.1f}" font-size="11" font-weight="700" fill="{RED}" '
        f'text-anchor="end">{_esc(_shown(metric, value))}</text>'
        if current
        else ""
    )
    return (
        f'<circle{css} cx="{x(i):.1f}" cy="{y(value):.1f}" r="{radius}" fill="{colour}" stroke="#ffffff" '
        f'stroke-width="1.5"><title>{_esc(_shown(metric, value))}</title></circle>{label}'
    )


def _axis(labels: Sequence[str], x: Any) -> str:
    every = max(1, math.ceil(len(labels) / 7))
    parts = []
    for i, text in enumerate(labels):
        if (len(labels) - 1 - i) % every:
            continue
        weight = 700 if i == len(labels) - 1 else 400
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - 10}" font-size="10" font-weight="{weight}" fill="{INK}" '
            f'text-anchor="middle">{_esc(text)}</text>'
        )
    return "".join(parts)
