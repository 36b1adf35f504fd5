"""Chart b: failure rate by model, style and size, failure-rate jumps highlighted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from imagegen.reporting import read, show, svg

BAR_WIDTH = 1000
BAR_LABEL_RIGHT = 200  # keys are right-aligned against this x
BAR_LEFT, BAR_SPAN = 212, 380  # the rest, on the right, is for the value and the annotation
ROW_HEIGHT = 30
BAR_TOP = 44
KEY_CHARS = 28


def failure_chart(report: read.Document, dimension: str, field: str) -> str:
    rows, jumps = read.rows(report, field), read.jumps(report, dimension)
    name, title = f"failure-{dimension}", f"Failure rate by {dimension}"
    if not rows:
        body = svg.label(
            BAR_WIDTH / 2,
            36,
            "No requests in this period.",
            font_size=13,
            fill=svg.MUTED,
            text_anchor="middle",
        )
        return svg.chart(name, title, f"No {dimension} had requests.", BAR_WIDTH, 60, body)
    rates = [r.failure_rate for r in rows if r.failure_rate is not None]
    expected = [read.number(a.get("expected")) or 0 for a in jumps.values()]
    ticks = svg.ticks(max([*rates, *expected], default=0), floor=10, cap=100)
    height = BAR_TOP + ROW_HEIGHT * len(rows) + 40
    legend = [
        (svg.box_swatch(svg.BAR), "Failure rate"),
        (svg.box_swatch(svg.RED), "Failure-rate jump (warning, critical)"),
        (svg.box_swatch(svg.RED_SOFT), "Unusual rise (info)"),
        (svg.tick_swatch(), "Baseline median"),
    ]
    body = "".join(
        [
            svg.legend(legend, BAR_LEFT, 16),
            _bar_axis(ticks, height - 40),
            *(_bar_row(row, i, ticks[-1], dimension, jumps.get(row.key)) for i, row in enumerate(rows)),
        ]
    )
    jumped = [row.key for row in rows if row.key in jumps]
    description = f"Failure rate of each {dimension}, highest first. " + (
        f"Failure-rate jump: {', '.join(jumped)}." if jumped else "No failure-rate jump."
    )
    return svg.chart(name, title, description, BAR_WIDTH, height, body)


def _bar_x(rate: float, top: float) -> float:
    return BAR_LEFT + BAR_SPAN * min(rate, top) / top


def _bar_axis(ticks: Sequence[float], bottom: float) -> str:
    parts = []
    for tick in ticks:
        x = _bar_x(tick, ticks[-1])
        parts.append(svg.el("line", x1=x, y1=BAR_TOP - 4, x2=x, y2=bottom, stroke=svg.GRID, stroke_width=1))
        parts.append(
            svg.label(
                x, bottom + 16, f"{show.trim(tick, 1)}%", font_size=11, fill=svg.MUTED, text_anchor="middle"
            )
        )
    parts.append(
        svg.el("line", x1=BAR_LEFT, y1=BAR_TOP - 4, x2=BAR_LEFT, y2=bottom, stroke=svg.INK, stroke_width=1)
    )
    caption = "failure rate: failed of finished (completed + failed) requests"
    parts.append(
        svg.label(
            BAR_LEFT + BAR_SPAN / 2, bottom + 32, caption, font_size=11, fill=svg.MUTED, text_anchor="middle"
        )
    )
    return svg.el("g", "".join(parts), class_="axis")


def _jump_colour(jump: Mapping[str, Any]) -> str:
    # An info finding is unusual for this history but below the case study's threshold: softer.
    return svg.RED_SOFT if read.severity(jump) == "info" else svg.RED


def _bar_row(row: read.Row, index: int, top: float, dimension: str, jump: Mapping[str, Any] | None) -> str:
    """One key: its name, a track, its bar and its value; the whole row has one tooltip."""
    mid = BAR_TOP + ROW_HEIGHT * index + ROW_HEIGHT / 2
    text_colour, weight = (svg.RED, 700) if jump else (svg.INK, 400)
    key = svg.shorten(row.key, KEY_CHARS)
    parts = [
        svg.tooltip(_bar_title(row, dimension, jump)),
        svg.label(
            BAR_LABEL_RIGHT,
            mid + 4,
            key,
            font_size=12,
            font_weight=weight,
            fill=text_colour,
            text_anchor="end",
        ),
        svg.el("rect", x=BAR_LEFT, y=mid - 9, width=BAR_SPAN, height=18, fill=svg.TRACK),
    ]
    if row.failure_rate is None:
        note = "n/a: no finished requests"
        parts.append(
            svg.label(BAR_LEFT + 8, mid + 4, note, font_size=11, fill=svg.MUTED, font_style="italic")
        )
        return svg.el("g", "".join(parts), class_="bar")
    end = _bar_x(row.failure_rate, top)
    fill = _jump_colour(jump) if jump else svg.BAR
    width = max(end - BAR_LEFT, 1.5)
    parts.append(
        svg.el(
            "rect",
            x=BAR_LEFT,
            y=mid - 9,
            width=width,
            height=18,
            rx=2,
            fill=fill,
            class_="jump" if jump else None,
        )
    )
    if jump:
        parts.append(_median_tick(jump, top, mid))
    value = show.esc(
        f"{show.percent(row.failure_rate)} ({show.count(row.failed)} of {show.count(row.finished)})"
    )
    if jump:
        value += svg.el("tspan", show.esc(_jump_note(jump)), dx=10, font_weight=700)
    parts.append(
        svg.el("text", value, x=end + 8, y=mid + 4, font_size=12, font_weight=weight, fill=text_colour)
    )
    return svg.el("g", "".join(parts), class_="bar")


def _median_tick(jump: Mapping[str, Any], top: float, mid: float) -> str:
    expected = read.number(jump.get("expected"))
    if expected is None:
        return ""
    x = _bar_x(expected, top)
    return svg.el("line", x1=x, y1=mid - 12, x2=x, y2=mid + 12, stroke=svg.INK, stroke_width=2)


def _jump_note(jump: Mapping[str, Any]) -> str:
    expected, observed = read.number(jump.get("expected")), read.number(jump.get("observed"))
    if expected is None or observed is None:
        return "▲ failure-rate jump"
    return f"▲ {observed - expected:+.1f} pts vs median {show.percent(expected)}"


def _bar_title(row: read.Row, dimension: str, jump: Mapping[str, Any] | None) -> str:
    lines = [
        f"{dimension} {row.key}",
        f"failure rate {show.percent(row.failure_rate)}: {show.count(row.failed)} failed of "
        f"{show.count(row.finished)} finished ({show.count(row.total)} requests)",
    ]
    if jump:
        lines.append(f"{read.severity(jump) or 'unrated'}: {read.text(jump.get('message'))}")
    return "\n".join(lines)
