"""Chart a: the weekly trend of requests and credits spent, the weeks with anomalies marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from imagegen.reporting import read, show, svg

TREND_WIDTH = 960
TREND_LEFT, TREND_RIGHT = 64, 24
PANEL_HEIGHT = 150
PANEL_TOPS = (72, 72 + PANEL_HEIGHT + 56)
TREND_HEIGHT = PANEL_TOPS[1] + PANEL_HEIGHT + 56
MAX_VALUE_LABELS = 16  # above this many weeks only the anomalous and the current week are labelled
MAX_WEEK_LABELS = 13


@dataclass(frozen=True)
class _Week:
    id: str
    requests: float | None
    credits: float | None
    anomalies: list[str]  # the messages
    current: bool


def _weeks(report: read.Document, history: Sequence[read.Document]) -> list[_Week]:
    return [*(_week(d, current=False) for d in read.earlier(report, history)), _week(report, current=True)]


def _week(document: read.Document, *, current: bool) -> _Week:
    return _Week(
        id=read.text(document.get("id")) or "?",
        requests=read.number(document.get("totalRequests")),
        credits=read.number(document.get("totalCreditsSpent")),
        anomalies=[read.text(a.get("message")) or read.text(a.get("kind")) for a in read.anomalies(document)],
        current=current,
    )


def trend_chart(report: read.Document, history: Sequence[read.Document]) -> str:
    weeks = _weeks(report, history)
    step = (TREND_WIDTH - TREND_LEFT - TREND_RIGHT) / len(weeks)
    xs = [TREND_LEFT + step * (i + 0.5) for i in range(len(weeks))]
    body = "".join(
        [
            svg.legend(
                [
                    (svg.line_swatch(svg.BLUE), "Requests"),
                    (svg.line_swatch(svg.VIOLET), "Credits spent"),
                    (svg.dot_swatch(svg.RED), "Week with anomalies (hover for details)"),
                ],
                TREND_LEFT,
                20,
            ),
            *(_anomaly_band(w, x, step) for w, x in zip(weeks, xs, strict=True) if w.anomalies),
            _trend_panel(weeks, xs, [w.requests for w in weeks], PANEL_TOPS[0], "Requests", svg.BLUE),
            _trend_panel(weeks, xs, [w.credits for w in weeks], PANEL_TOPS[1], "Credits spent", svg.VIOLET),
            _week_labels(weeks, xs),
        ]
    )
    marked = [w.id for w in weeks if w.anomalies]
    description = (
        f"Requests and credits spent per week over {len(weeks)} week{'s' if len(weeks) > 1 else ''}, "
        f"from {weeks[0].id} to {weeks[-1].id}. "
        + (f"Weeks with anomalies: {', '.join(marked)}." if marked else "No week had anomalies.")
    )
    return svg.chart(
        "trend", "Weekly trend of requests and credits spent", description, TREND_WIDTH, TREND_HEIGHT, body
    )


def _week_title(week: _Week, value: str | None) -> str:
    lines = [week.id if value is None else f"{week.id}: {value}"]
    if week.anomalies:
        count = len(week.anomalies)
        lines.append(f"{count} anomal{'y' if count == 1 else 'ies'}:")
        lines += [f"• {message}" for message in week.anomalies]
    return "\n".join(lines)


def _anomaly_band(week: _Week, x: float, step: float) -> str:
    """A tint behind an anomalous week, through both panels, that lists its anomalies."""
    width = min(step * 0.8, 56)
    top, bottom = PANEL_TOPS[0] - 10, PANEL_TOPS[1] + PANEL_HEIGHT
    return svg.el(
        "rect",
        svg.tooltip(_week_title(week, None)),
        x=x - width / 2,
        y=top,
        width=width,
        height=bottom - top,
        rx=4,
        fill=svg.RED_TINT,
        class_="anomalous-week",
    )


def _trend_panel(
    weeks: Sequence[_Week],
    xs: Sequence[float],
    values: Sequence[float | None],
    top: float,
    name: str,
    colour: str,
) -> str:
    ticks = svg.ticks(max((v for v in values if v is not None), default=0), floor=4, whole=True)
    bottom = top + PANEL_HEIGHT

    def y_of(value: float) -> float:
        return bottom - PANEL_HEIGHT * value / ticks[-1]

    parts = [
        svg.label(TREND_LEFT - 52, top - 22, f"{name} per week", font_size=13, font_weight=600, fill=svg.INK)
    ]
    for tick in ticks:
        y = y_of(tick)
        parts.append(
            svg.el(
                "line",
                x1=TREND_LEFT,
                y1=y,
                x2=TREND_WIDTH - TREND_RIGHT,
                y2=y,
                stroke=svg.INK if tick == 0 else svg.GRID,
                stroke_width=1,
            )
        )
        parts.append(
            svg.label(
                TREND_LEFT - 8, y + 4, show.compact(tick), font_size=11, fill=svg.MUTED, text_anchor="end"
            )
        )
    known = [(x, y_of(v)) for x, v in zip(xs, values, strict=True) if v is not None]
    if len(known) > 1:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in known)
        parts.append(
            svg.el(
                "polyline",
                points=points,
                fill="none",
                stroke=colour,
                stroke_width=2.5,
                stroke_linejoin="round",
            )
        )
    label_all = len(weeks) <= MAX_VALUE_LABELS
    for week, x, value in zip(weeks, xs, values, strict=True):
        if value is not None:
            parts.append(_trend_point(week, x, y_of(value), value, name, colour, label_all))
    return svg.el("g", "".join(parts), class_="panel")


def _trend_point(
    week: _Week, x: float, y: float, value: float, name: str, colour: str, label_all: bool
) -> str:
    title = svg.tooltip(_week_title(week, f"{show.trim(value, 1)} {name.lower()}"))
    if week.anomalies:
        dot = svg.el(
            "circle",
            title,
            cx=x,
            cy=y,
            r=6.5,
            fill=svg.RED,
            stroke="#ffffff",
            stroke_width=2,
            class_="anomalous-week",
        )
    else:
        dot = svg.el("circle", title, cx=x, cy=y, r=4, fill=colour, stroke="#ffffff", stroke_width=1.5)
    if not (label_all or week.anomalies or week.current):
        return dot
    weight = 700 if week.anomalies or week.current else 400
    return dot + svg.label(
        x,
        y - 11,
        show.compact(value),
        font_size=11,
        font_weight=weight,
        fill=svg.RED if week.anomalies else svg.INK,
        text_anchor="middle",
    )


def _week_labels(weeks: Sequence[_Week], xs: Sequence[float]) -> str:
    every = math.ceil(len(weeks) / MAX_WEEK_LABELS)
    y = PANEL_TOPS[1] + PANEL_HEIGHT + 20
    parts = []
    for i, (week, x) in enumerate(zip(weeks, xs, strict=True)):
        if (len(weeks) - 1 - i) % every:
            continue  # thinned out, counting back from the current week
        text = svg.shorten(week.id.removeprefix("report_"), 12)
        colour = svg.RED if week.anomalies else svg.INK
        weight = 700 if week.anomalies or week.current else 400
        parts.append(
            svg.el(
                "text",
                svg.tooltip(week.id) + show.esc(text),
                x=x,
                y=y,
                font_size=11,
                font_weight=weight,
                fill=colour,
                text_anchor="middle",
            )
        )
        if week.current:
            parts.append(
                svg.label(x, y + 15, "this report", font_size=10, fill=svg.MUTED, text_anchor="middle")
            )
    return svg.el("g", "".join(parts), class_="weeks")
