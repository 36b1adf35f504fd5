"""A report document rendered for people: markdown, and a self-contained HTML page with charts.

The page has to open offline, as a file attachment as well as in a browser: one file, inline CSS,
hand-drawn SVG, no JavaScript, nothing fetched (fonts included). Every string that comes from a
document (ids, keys, messages, notes) is escaped, since style, size and color keys are whatever
clients sent.

Documents are read defensively: older ones lack newer fields (`canceledRequests`,
`generationTimeMs`), rates are null when nothing finished, and a number that is not a number is
shown as "n/a" rather than trusted.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from imagegen.reporting.bands import band_chart

Document = Mapping[str, Any]

DIMENSIONS = (("model", "byModel"), ("style", "byStyle"), ("size", "bySize"), ("color", "byColor"))
CHARTED_DIMENSIONS = DIMENSIONS[:3]  # color has many keys and little to say; it gets a table

SUMMARY = (
    ("Requests", "totalRequests"),
    ("Completed", "completedRequests"),
    ("Failed", "failedRequests"),
    ("Canceled", "canceledRequests"),
    ("Success rate", "successRate"),
    ("Credits spent", "totalCreditsSpent"),
    ("Credits refunded", "totalCreditsRefunded"),
    ("Unique users", "uniqueUsers"),
)

_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
_MD_DOTS = {"critical": "🔴", "warning": "🟠", "info": "🔵"}


# ---------------------------------------------------------------------------------------------
# Reading a document
# ---------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite number from a document, or None (null, missing, or not a number at all)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class _Row:
    """One model, style, size or color of a breakdown."""

    key: str
    total: float | None
    completed: float | None
    failed: float | None
    failure_rate: float | None

    @property
    def finished(self) -> float | None:
        if self.completed is None or self.failed is None:
            return None
        return self.completed + self.failed


def _rows(report: Document, field: str) -> list[_Row]:
    """A breakdown, worst failure rate first; keys with no rate (nothing finished) last."""
    data = report.get(field)
    if not isinstance(data, Mapping):
        return []
    rows = [
        _Row(
            str(key),
            _number(entry.get("total")),
            _number(entry.get("completed")),
            _number(entry.get("failed")),
            _number(entry.get("failureRate")),
        )
        for key, entry in data.items()
        if isinstance(entry, Mapping)
    ]
    return sorted(rows, key=lambda r: (r.failure_rate is None, -(r.failure_rate or 0), r.key))


def _anomalies(report: Document) -> list[Mapping[str, Any]]:
    found = report.get("anomalies")
    if not isinstance(found, list):
        return []
    return [a for a in found if isinstance(a, Mapping)]


def _notes(report: Document) -> list[str]:
    notes = report.get("notes")
    return [str(note) for note in notes] if isinstance(notes, list) else []


def _severity(anomaly: Mapping[str, Any]) -> str:
    return _text(anomaly.get("severity")).lower()


def _jumps(report: Document, dimension: str) -> dict[str, Mapping[str, Any]]:
    """The keys of one dimension with a failure-rate jump, and the anomaly that says so."""
    return {
        _text(a.get("key")): a
        for a in _anomalies(report)
        if a.get("kind") == "failure_rate_jump" and a.get("dimension") == dimension
    }


def _generation_times(report: Document) -> dict[str, tuple[float | None, float | None]]:
    """generationTimeMs as {model: (p50, p95)}; empty when the document predates it."""
    times = report.get("generationTimeMs")
    if not isinstance(times, Mapping):
        return {}
    return {
        str(model): (_number(t.get("p50")), _number(t.get("p95")))
        for model, t in sorted(times.items(), key=lambda item: str(item[0]))
        if isinstance(t, Mapping)
    }


def _instant(value: Any) -> datetime | None:
    try:
        instant = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# Formatting numbers and dates (plain text: escape before use)
# ---------------------------------------------------------------------------------------------

NA = "n/a"


def _trim(number: float, decimals: int) -> str:
    text = f"{number:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _count(value: Any) -> str:
    number = _number(value)
    return NA if number is None else _trim(number, 1)


def _percent(value: Any) -> str:
    number = _number(value)
    return NA if number is None else f"{number:.1f}%"


def _precise_percent(value: Any) -> str:
    # The headline success rate keeps the document's 2 decimals: 99.95% is not 100.0%.
    number = _number(value)
    return NA if number is None else f"{_trim(number, 2)}%"


def _compact(number: float) -> str:
    """1234 -> 1.2k, for chart labels."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            return f"{_trim(number / limit, 1)}{suffix}"
    return _trim(number, 1)


def _duration(value: float | None) -> str:
    if value is None:
        return NA
    return f"{_trim(value / 1000, 2)} s" if value >= 1000 else f"{_trim(value, 0)} ms"


def _is_rate(anomaly: Mapping[str, Any]) -> bool:
    return _text(anomaly.get("metric")).endswith("Rate")


def _measure(anomaly: Mapping[str, Any], field: str) -> str:
    value = anomaly.get(field)
    if _is_rate(anomaly) or anomaly.get("metric") == "share":
        return _percent(value)
    if anomaly.get("metric") == "creditsPerRequest":
        number = _number(value)
        return NA if number is None else f"{number:.2f}"
    return _count(value)


def _score(anomaly: Mapping[str, Any]) -> str:
    score = _number(anomaly.get("score"))
    return NA if score is None else f"{score:.1f}"


def _when(value: Any) -> str:
    if value is None:
        return NA
    instant = _instant(value)
    return _text(value) if instant is None else f"{instant:%a %d %b %Y %H:%M}"


def _period(report: Document) -> str:
    start, end = report.get("periodStart"), report.get("periodEnd")
    return f"{_when(start)} → {_when(end)} UTC"


def _generated(report: Document) -> str:
    return f"{_when(report.get('generatedAt'))} UTC"


def _baseline(report: Document) -> str:
    weeks = _number(report.get("baselineWeeks"))
    if weeks is None:
        return NA
    return f"{_trim(weeks, 0)} week{'' if weeks == 1 else 's'} of history"


def _tally(anomalies: Sequence[Mapping[str, Any]]) -> str:
    """ "3 anomalies: 1 critical, 2 warning"."""
    by: dict[str, int] = {}
    for anomaly in anomalies:
        by[_severity(anomaly)] = by.get(_severity(anomaly), 0) + 1
    parts = ", ".join(
        f"{n} {severity or 'unrated'}" for severity, n in sorted(by.items(), key=_severity_order)
    )
    plural = "y" if len(anomalies) == 1 else "ies"
    return f"{len(anomalies)} anomal{plural}: {parts}"


def _severity_order(item: tuple[str, int]) -> int:
    return _SEVERITY_RANK.get(item[0], len(_SEVERITY_RANK))


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}#|!~])")


def _md(value: Any) -> str:
    """Data as inert markdown text: one line, no HTML, no emphasis, links or table breaks."""
    one_line = " ".join(_text(value).split())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def _md_table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """A pipe table; `align` has one letter per column, l or r."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [f"| {' | '.join(cells)} |" for cells in (header, rule, *rows)]


def render_markdown(report: Document) -> str:
    """The report as markdown: summary, anomalies, notes, breakdowns and generation times."""
    lines = [
        f"# imagegen report {_md(report.get('id'))}",
        "",
        f"**Period:** {_md(_period(report))}  ",
        f"**Generated:** {_md(_generated(report))} · **Baseline:** {_md(_baseline(report))}",
        "",
        "## Summary",
        "",
        *_md_table(("Metric", "Value"), "lr", _md_summary(report)),
        "",
        *_md_anomalies(report),
    ]
    for dimension, field in DIMENSIONS:
        lines += ["", f"## By {dimension}", "", *_md_breakdown(report, dimension, field)]
    times = _generation_times(report)
    if times:
        rows = ((_md(model), _duration(p50), _duration(p95)) for model, (p50, p95) in times.items())
        lines += ["", "## Generation time by model", "", *_md_table(("Model", "p50", "p95"), "lrr", rows)]
    return "\n".join(lines) + "\n"


def _md_summary(report: Document) -> list[tuple[str, str]]:
    return [(label, _summary_value(report, field)) for label, field in SUMMARY]


def _summary_value(report: Document, field: str) -> str:
    if field == "successRate":
        return _precise_percent(report.get(field))
    if field not in report:
        return NA  # an older document without this field: not a zero
    return _count(report.get(field))


def _md_anomalies(report: Document) -> list[str]:
    anomalies, notes = _anomalies(report), _notes(report)
    if not anomalies:
        lines = ["## Anomalies", "", "No anomalies."]
    else:
        lines = [f"## Anomalies ({len(anomalies)})", ""]
        lines += [f"- {_md_anomaly(a)}" for a in anomalies]
    withheld = _expected(report)
    if withheld:
        lines += ["", "## Expected, not alarmed", ""]
        lines += [f"- {_md_anomaly(a)}" for a in withheld]
    if notes:
        lines += ["", "## Notes", "", *(f"- {_md(note)}" for note in notes)]
    return lines


def _md_anomaly(anomaly: Mapping[str, Any]) -> str:
    severity = _severity(anomaly)
    badge = f"{_MD_DOTS.get(severity, '⚪')} **{_md(severity.upper() or 'UNRATED')}**"
    numbers = (
        f"observed {_measure(anomaly, 'observed')}, expected {_measure(anomaly, 'expected')}, "
        f"score {_score(anomaly)}"
    )
    mark = anomaly.get("mark")
    marked = ""
    if isinstance(mark, Mapping):
        note = f": {mark.get('note')}" if mark.get("note") else ""
        marked = f" _(marked expected in {_md(mark.get('reportId'))}{_md(note)})_"
    band = _band_text(anomaly)
    band = f", ordinary {band}" if band else ""
    return f"{badge} {_md(anomaly.get('message'))} — {numbers}{band}{marked}"


def _band_text(anomaly: Mapping[str, Any]) -> str:
    """ "up to 12.3%", "from 80.0%" or "1200 to 3400": the band of ordinary values."""
    lower, upper = _number(anomaly.get("lower")), _number(anomaly.get("upper"))
    shown = [None if v is None else _measure({**anomaly, "edge": v}, "edge") for v in (lower, upper)]
    if shown[0] is not None and shown[1] is not None:
        return f"{shown[0]} to {shown[1]}"
    if shown[1] is not None:
        return f"up to {shown[1]}"
    return "" if shown[0] is None else f"from {shown[0]}"


def _md_breakdown(report: Document, dimension: str, field: str) -> list[str]:
    rows = _rows(report, field)
    if not rows:
        return ["_No requests._"]
    jumps = _jumps(report, dimension)
    header = (dimension.capitalize(), "Requests", "Completed", "Failed", "Failure rate")
    return _md_table(header, "lrrrr", (_md_breakdown_row(row, jumps.get(row.key)) for row in rows))


def _md_breakdown_row(row: _Row, jump: Mapping[str, Any] | None) -> tuple[str, ...]:
    rate = _percent(row.failure_rate)
    if jump is not None:
        rate = f"**{rate}** {_MD_DOTS.get(_severity(jump), '⚪')} jump"
    return (_md(row.key), _count(row.total), _count(row.completed), _count(row.failed), rate)


# ---------------------------------------------------------------------------------------------
# SVG building blocks
# ---------------------------------------------------------------------------------------------

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


def _esc(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _attr_value(value: object) -> str:
    if isinstance(value, float):
        return _trim(value, 1).replace(",", "")
    return _esc(value)


def _el(tag: str, content: str | None = None, /, **attrs: object) -> str:
    """An SVG element; attribute names in snake_case become kebab-case. `content` is markup."""
    rendered = "".join(
        f' {name.rstrip("_").replace("_", "-")}="{_attr_value(value)}"'
        for name, value in attrs.items()
        if value is not None
    )
    return f"<{tag}{rendered}/>" if content is None else f"<{tag}{rendered}>{content}</{tag}>"


def _label(x: float, y: float, text: str, **attrs: object) -> str:
    """Text drawn from data or numbers: escaped here."""
    return _el("text", _esc(text), x=x, y=y, **attrs)


def _tooltip(text: str) -> str:
    return _el("title", _esc(text))


def _svg(name: str, title: str, description: str, width: float, height: float, body: str) -> str:
    """An accessible inline SVG: its <title> and <desc> name it for screen readers."""
    return _el(
        "svg",
        _el("title", _esc(title), id=f"{name}-title")
        + _el("desc", _esc(description), id=f"{name}-desc")
        + body,
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {int(width)} {int(height)}",
        role="img",
        aria_labelledby=f"{name}-title {name}-desc",
        class_="chart",
    )


def _shorten(text: str, limit: int) -> str:
    # SVG text does not wrap: long keys are cut and given in full in a <title>.
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ticks(highest: float, *, floor: float, cap: float | None = None, whole: bool = False) -> list[float]:
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


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    """A row of (swatch markup at 0,0, label) pairs, left to right."""
    parts, cursor = [], x
    for swatch, text in items:
        parts.append(_el("g", swatch, transform=f"translate({cursor:.0f} {y:.0f})"))
        parts.append(_label(cursor + 22, y + 4, text, font_size=12, fill=INK))
        cursor += 22 + 6.4 * len(text) + 26
    return _el("g", "".join(parts), class_="legend")


def _line_swatch(colour: str) -> str:
    return _el("line", x1=0, y1=0, x2=16, y2=0, stroke=colour, stroke_width=3) + _el(
        "circle", cx=8, cy=0, r=3.5, fill=colour
    )


def _dot_swatch(colour: str) -> str:
    return _el("circle", cx=8, cy=0, r=5.5, fill=colour, stroke="#ffffff", stroke_width=2)


def _box_swatch(colour: str) -> str:
    return _el("rect", x=0, y=-6, width=16, height=12, rx=2, fill=colour)


def _tick_swatch() -> str:
    return _el("rect", x=0, y=-6, width=16, height=12, rx=2, fill=TRACK) + _el(
        "line", x1=8, y1=-8, x2=8, y2=8, stroke=INK, stroke_width=2
    )


# ---------------------------------------------------------------------------------------------
# Chart a: weekly trend of requests and credits, anomalous weeks marked
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Week:
    id: str
    requests: float | None
    credits: float | None
    anomalies: list[str]  # the messages
    current: bool


def _earlier(report: Document, history: Sequence[Document]) -> list[Document]:
    # A history that already holds the current report (a re-run) must not show it twice.
    return [d for d in history if isinstance(d, Mapping) and d.get("id") != report.get("id")]


def _weeks(report: Document, history: Sequence[Document]) -> list[_Week]:
    return [*(_week(d, current=False) for d in _earlier(report, history)), _week(report, current=True)]


def _week(document: Document, *, current: bool) -> _Week:
    return _Week(
        id=_text(document.get("id")) or "?",
        requests=_number(document.get("totalRequests")),
        credits=_number(document.get("totalCreditsSpent")),
        anomalies=[_text(a.get("message")) or _text(a.get("kind")) for a in _anomalies(document)],
        current=current,
    )


TREND_WIDTH = 960
TREND_LEFT, TREND_RIGHT = 64, 24
PANEL_HEIGHT = 150
PANEL_TOPS = (72, 72 + PANEL_HEIGHT + 56)
TREND_HEIGHT = PANEL_TOPS[1] + PANEL_HEIGHT + 56
MAX_VALUE_LABELS = 16  # above this many weeks only the anomalous and the current week are labelled
MAX_WEEK_LABELS = 13


def _trend_chart(report: Document, history: Sequence[Document]) -> str:
    weeks = _weeks(report, history)
    step = (TREND_WIDTH - TREND_LEFT - TREND_RIGHT) / len(weeks)
    xs = [TREND_LEFT + step * (i + 0.5) for i in range(len(weeks))]
    body = "".join(
        [
            _legend(
                [
                    (_line_swatch(BLUE), "Requests"),
                    (_line_swatch(VIOLET), "Credits spent"),
                    (_dot_swatch(RED), "Week with anomalies (hover for details)"),
                ],
                TREND_LEFT,
                20,
            ),
            *(_anomaly_band(w, x, step) for w, x in zip(weeks, xs, strict=True) if w.anomalies),
            _trend_panel(weeks, xs, [w.requests for w in weeks], PANEL_TOPS[0], "Requests", BLUE),
            _trend_panel(weeks, xs, [w.credits for w in weeks], PANEL_TOPS[1], "Credits spent", VIOLET),
            _week_labels(weeks, xs),
        ]
    )
    marked = [w.id for w in weeks if w.anomalies]
    description = (
        f"Requests and credits spent per week over {len(weeks)} week{'s' if len(weeks) > 1 else ''}, "
        f"from {weeks[0].id} to {weeks[-1].id}. "
        + (f"Weeks with anomalies: {', '.join(marked)}." if marked else "No week had anomalies.")
    )
    return _svg(
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
    return _el(
        "rect",
        _tooltip(_week_title(week, None)),
        x=x - width / 2,
        y=top,
        width=width,
        height=bottom - top,
        rx=4,
        fill=RED_TINT,
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
    ticks = _ticks(max((v for v in values if v is not None), default=0), floor=4, whole=True)
    bottom = top + PANEL_HEIGHT

    def y_of(value: float) -> float:
        return bottom - PANEL_HEIGHT * value / ticks[-1]

    parts = [_label(TREND_LEFT - 52, top - 22, f"{name} per week", font_size=13, font_weight=600, fill=INK)]
    for tick in ticks:
        y = y_of(tick)
        parts.append(
            _el(
                "line",
                x1=TREND_LEFT,
                y1=y,
                x2=TREND_WIDTH - TREND_RIGHT,
                y2=y,
                stroke=INK if tick == 0 else GRID,
                stroke_width=1,
            )
        )
        parts.append(
            _label(TREND_LEFT - 8, y + 4, _compact(tick), font_size=11, fill=MUTED, text_anchor="end")
        )
    known = [(x, y_of(v)) for x, v in zip(xs, values, strict=True) if v is not None]
    if len(known) > 1:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in known)
        parts.append(
            _el(
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
    return _el("g", "".join(parts), class_="panel")


def _trend_point(
    week: _Week, x: float, y: float, value: float, name: str, colour: str, label_all: bool
) -> str:
    title = _tooltip(_week_title(week, f"{_trim(value, 1)} {name.lower()}"))
    if week.anomalies:
        dot = _el(
            "circle",
            title,
            cx=x,
            cy=y,
            r=6.5,
            fill=RED,
            stroke="#ffffff",
            stroke_width=2,
            class_="anomalous-week",
        )
    else:
        dot = _el("circle", title, cx=x, cy=y, r=4, fill=colour, stroke="#ffffff", stroke_width=1.5)
    if not (label_all or week.anomalies or week.current):
        return dot
    weight = 700 if week.anomalies or week.current else 400
    return dot + _label(
        x,
        y - 11,
        _compact(value),
        font_size=11,
        font_weight=weight,
        fill=RED if week.anomalies else INK,
        text_anchor="middle",
    )


def _week_labels(weeks: Sequence[_Week], xs: Sequence[float]) -> str:
    every = math.ceil(len(weeks) / MAX_WEEK_LABELS)
    y = PANEL_TOPS[1] + PANEL_HEIGHT + 20
    parts = []
    for i, (week, x) in enumerate(zip(weeks, xs, strict=True)):
        if (len(weeks) - 1 - i) % every:
            continue  # thinned out, counting back from the current week
        text = _shorten(week.id.removeprefix("report_"), 12)
        colour = RED if week.anomalies else INK
        weight = 700 if week.anomalies or week.current else 400
        parts.append(
            _el(
                "text",
                _tooltip(week.id) + _esc(text),
                x=x,
                y=y,
                font_size=11,
                font_weight=weight,
                fill=colour,
                text_anchor="middle",
            )
        )
        if week.current:
            parts.append(_label(x, y + 15, "this report", font_size=10, fill=MUTED, text_anchor="middle"))
    return _el("g", "".join(parts), class_="weeks")


# ---------------------------------------------------------------------------------------------
# Chart b: failure rate by model, style and size, failure-rate jumps highlighted
# ---------------------------------------------------------------------------------------------

BAR_WIDTH = 1000
BAR_LABEL_RIGHT = 200  # keys are right-aligned against this x
BAR_LEFT, BAR_SPAN = 212, 380  # the rest, on the right, is for the value and the annotation
ROW_HEIGHT = 30
BAR_TOP = 44
KEY_CHARS = 28


def _failure_chart(report: Document, dimension: str, field: str) -> str:
    rows, jumps = _rows(report, field), _jumps(report, dimension)
    name, title = f"failure-{dimension}", f"Failure rate by {dimension}"
    if not rows:
        body = _label(
            BAR_WIDTH / 2, 36, "No requests in this period.", font_size=13, fill=MUTED, text_anchor="middle"
        )
        return _svg(name, title, f"No {dimension} had requests.", BAR_WIDTH, 60, body)
    rates = [r.failure_rate for r in rows if r.failure_rate is not None]
    expected = [_number(a.get("expected")) or 0 for a in jumps.values()]
    ticks = _ticks(max([*rates, *expected], default=0), floor=10, cap=100)
    height = BAR_TOP + ROW_HEIGHT * len(rows) + 40
    legend = [
        (_box_swatch(BAR), "Failure rate"),
        (_box_swatch(RED), "Failure-rate jump (warning, critical)"),
        (_box_swatch(RED_SOFT), "Unusual rise (info)"),
        (_tick_swatch(), "Baseline median"),
    ]
    body = "".join(
        [
            _legend(legend, BAR_LEFT, 16),
            _bar_axis(ticks, height - 40),
            *(_bar_row(row, i, ticks[-1], dimension, jumps.get(row.key)) for i, row in enumerate(rows)),
        ]
    )
    jumped = [row.key for row in rows if row.key in jumps]
    description = f"Failure rate of each {dimension}, highest first. " + (
        f"Failure-rate jump: {', '.join(jumped)}." if jumped else "No failure-rate jump."
    )
    return _svg(name, title, description, BAR_WIDTH, height, body)


def _bar_x(rate: float, top: float) -> float:
    return BAR_LEFT + BAR_SPAN * min(rate, top) / top


def _bar_axis(ticks: Sequence[float], bottom: float) -> str:
    parts = []
    for tick in ticks:
        x = _bar_x(tick, ticks[-1])
        parts.append(_el("line", x1=x, y1=BAR_TOP - 4, x2=x, y2=bottom, stroke=GRID, stroke_width=1))
        parts.append(
            _label(x, bottom + 16, f"{_trim(tick, 1)}%", font_size=11, fill=MUTED, text_anchor="middle")
        )
    parts.append(_el("line", x1=BAR_LEFT, y1=BAR_TOP - 4, x2=BAR_LEFT, y2=bottom, stroke=INK, stroke_width=1))
    caption = "failure rate: failed of finished (completed + failed) requests"
    parts.append(
        _label(BAR_LEFT + BAR_SPAN / 2, bottom + 32, caption, font_size=11, fill=MUTED, text_anchor="middle")
    )
    return _el("g", "".join(parts), class_="axis")


def _jump_colour(jump: Mapping[str, Any]) -> str:
    # An info finding is unusual for this history but below the case study's threshold: softer.
    return RED_SOFT if _severity(jump) == "info" else RED


def _bar_row(row: _Row, index: int, top: float, dimension: str, jump: Mapping[str, Any] | None) -> str:
    """One key: its name, a track, its bar and its value; the whole row has one tooltip."""
    mid = BAR_TOP + ROW_HEIGHT * index + ROW_HEIGHT / 2
    text_colour, weight = (RED, 700) if jump else (INK, 400)
    key = _shorten(row.key, KEY_CHARS)
    parts = [
        _tooltip(_bar_title(row, dimension, jump)),
        _label(
            BAR_LABEL_RIGHT,
            mid + 4,
            key,
            font_size=12,
            font_weight=weight,
            fill=text_colour,
            text_anchor="end",
        ),
        _el("rect", x=BAR_LEFT, y=mid - 9, width=BAR_SPAN, height=18, fill=TRACK),
    ]
    if row.failure_rate is None:
        note = "n/a: no finished requests"
        parts.append(_label(BAR_LEFT + 8, mid + 4, note, font_size=11, fill=MUTED, font_style="italic"))
        return _el("g", "".join(parts), class_="bar")
    end = _bar_x(row.failure_rate, top)
    fill = _jump_colour(jump) if jump else BAR
    width = max(end - BAR_LEFT, 1.5)
    parts.append(
        _el(
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
    value = _esc(f"{_percent(row.failure_rate)} ({_count(row.failed)} of {_count(row.finished)})")
    if jump:
        value += _el("tspan", _esc(_jump_note(jump)), dx=10, font_weight=700)
    parts.append(_el("text", value, x=end + 8, y=mid + 4, font_size=12, font_weight=weight, fill=text_colour))
    return _el("g", "".join(parts), class_="bar")


def _median_tick(jump: Mapping[str, Any], top: float, mid: float) -> str:
    expected = _number(jump.get("expected"))
    if expected is None:
        return ""
    x = _bar_x(expected, top)
    return _el("line", x1=x, y1=mid - 12, x2=x, y2=mid + 12, stroke=INK, stroke_width=2)


def _jump_note(jump: Mapping[str, Any]) -> str:
    expected, observed = _number(jump.get("expected")), _number(jump.get("observed"))
    if expected is None or observed is None:
        return "▲ failure-rate jump"
    return f"▲ {observed - expected:+.1f} pts vs median {_percent(expected)}"


def _bar_title(row: _Row, dimension: str, jump: Mapping[str, Any] | None) -> str:
    lines = [
        f"{dimension} {row.key}",
        f"failure rate {_percent(row.failure_rate)}: {_count(row.failed)} failed of "
        f"{_count(row.finished)} finished ({_count(row.total)} requests)",
    ]
    if jump:
        lines.append(f"{_severity(jump) or 'unrated'}: {_text(jump.get('message'))}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The HTML page
# ---------------------------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f3f4f6;
  --red: #dc2626; --green: #15803d; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1060px; margin: 0 auto; padding: 28px 20px 40px; }
header { padding: 4px 4px 8px; }
.eyebrow { margin: 0; color: var(--muted); font-size: 12px; letter-spacing: .08em;
  text-transform: uppercase; }
h1 { margin: 2px 0 6px; font-size: 28px; line-height: 1.2; overflow-wrap: anywhere; }
h2 { margin: 0 0 14px; font-size: 18px; }
h3 { margin: 18px 0 6px; font-size: 15px; }
.meta { margin: 0; color: var(--muted); }
.meta strong { color: var(--ink); font-weight: 600; }
.status { display: inline-block; margin-top: 12px; padding: 6px 12px; border-radius: 8px;
  font-weight: 600; }
.status.alarm { background: #fee2e2; color: #991b1b; }
.status.calm { background: #dcfce7; color: #166534; }
section { margin-top: 18px; padding: 20px 24px; background: #fff; border: 1px solid var(--line);
  border-radius: 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; }
.lead { margin: -8px 0 12px; }
.card { padding: 12px 14px; border: 1px solid var(--line); border-radius: 8px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .delta { color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
table { width: 100%; border-collapse: collapse; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { color: var(--muted); font-size: 12px; font-weight: 600; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.key, .message { overflow-wrap: anywhere; }
td.key { min-width: 7em; }
.kind { color: var(--muted); font-size: 12px; }
tr.jump td { background: #fef2f2; }
tr.jump td.rate { color: var(--red); font-weight: 700; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 11px;
  font-weight: 700; letter-spacing: .04em; text-transform: uppercase; white-space: nowrap; }
.badge.critical { background: #fee2e2; color: #991b1b; }
.badge.warning { background: #fef3c7; color: #92400e; }
.badge.info { background: #dbeafe; color: #1e40af; }
.badge.other { background: var(--line); color: var(--ink); }
.none { margin: 0; color: var(--green); font-weight: 600; }
ul.notes { margin: 0; padding-left: 20px; }
figure { margin: 0; }
.bands { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 460px), 1fr));
  gap: 14px 24px; margin-top: 16px; }
.bands figure + figure { margin-top: 0; }
figure.band figcaption { font-weight: 400; font-size: 13px; }
figure + figure { margin-top: 22px; }
figcaption { margin-bottom: 4px; font-weight: 600; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart text { font-family: inherit; }
.tables { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 420px), 1fr));
  gap: 8px 28px; }
footer { margin-top: 18px; color: var(--muted); font-size: 12px; text-align: center; }
@media print { body { background: #fff; } section { break-inside: avoid; } }
"""


def render_html(report: Document, history: Sequence[Document] = ()) -> str:
    """A complete, self-contained HTML5 page for one report.

    `history` holds the earlier weekly report documents, oldest first (may be empty); the weekly
    trend chart draws them followed by `report`.
    """
    earlier = _earlier(report, history)
    sections = [
        _html_summary(report, earlier[-1] if earlier else None),
        _html_anomalies(report),
        _html_section("Weekly trend", _trend_chart(report, history)),
        _html_section("Failure rate", "".join(_figure(report, d, f) for d, f in CHARTED_DIMENSIONS)),
        _html_breakdowns(report),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>imagegen report {_esc(report.get('id'))}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{_html_header(report)}\n" + "\n".join(sections) + "\n"
        "<footer>Generated by imagegen. All times are UTC; a period includes its start and "
        "excludes its end. Hover a chart mark for details.</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def _html_section(title: str, content: str) -> str:
    return f"<section>\n<h2>{_esc(title)}</h2>\n{content}\n</section>"


def _html_header(report: Document) -> str:
    anomalies = _anomalies(report)
    if anomalies:
        status = f'<p class="status alarm">⚠ {_esc(_tally(anomalies))}</p>'
    else:
        status = '<p class="status calm">✓ No anomalies</p>'
    return (
        "<header>\n"
        '<p class="eyebrow">imagegen · weekly report</p>\n'
        f"<h1>{_esc(report.get('id'))}</h1>\n"
        f'<p class="meta"><strong>Period</strong> {_esc(_period(report))}</p>\n'
        f'<p class="meta"><strong>Generated</strong> {_esc(_generated(report))} · '
        f"<strong>Baseline</strong> {_esc(_baseline(report))}</p>\n"
        f"{status}\n</header>"
    )


def _html_summary(report: Document, previous: Document | None) -> str:
    cards = []
    for label, field in SUMMARY:
        delta = _delta(report, previous, field) if previous is not None else ""
        delta_html = f'<div class="delta">{_esc(delta)}</div>' if delta else ""
        cards.append(
            f'<div class="card"><div class="label">{_esc(label)}</div>'
            f'<div class="value">{_esc(_summary_value(report, field))}</div>{delta_html}</div>'
        )
    since = ""
    if previous is not None:
        since = (
            f'<p class="meta lead">Changes are from the previous report, {_esc(previous.get("id"))}.</p>\n'
        )
    return _html_section("Summary", f'{since}<div class="cards">\n{"".join(cards)}\n</div>')


def _delta(report: Document, previous: Document, field: str) -> str:
    """The change from the previous report: in points for the success rate, in percent otherwise."""
    now, before = _number(report.get(field)), _number(previous.get(field))
    if now is None or before is None:
        return ""
    if field == "successRate":
        return f"{_arrow(now - before)} {abs(now - before):.1f} pts"
    if before == 0:
        return "" if now == 0 else "▲ from 0"
    change = 100 * (now - before) / before
    return f"{_arrow(change)} {_trim(abs(change), 0 if abs(change) >= 10 else 1)}%"


def _arrow(change: float) -> str:
    return "▲" if change > 0 else "▼" if change < 0 else "="


def _html_anomalies(report: Document) -> str:
    anomalies, notes = _anomalies(report), _notes(report)
    if anomalies:
        rows = "\n".join(_html_anomaly_row(a) for a in anomalies)
        content = (
            '<table>\n<thead><tr><th>Severity</th><th>Finding</th><th class="num">Observed</th>'
            '<th class="num">Expected</th><th class="num">Score</th></tr></thead>\n'
            f"<tbody>\n{rows}\n</tbody>\n</table>"
        )
    else:
        content = '<p class="none">No anomalies.</p>'
    content += _html_bands(report, anomalies, "finding")
    withheld = _expected(report)
    if withheld:
        items = "".join(f"<li>{_esc(a.get('message'))}{_mark_note(a)}</li>" for a in withheld)
        content += (
            '\n<h3>Expected, not alarmed</h3>\n<p class="meta">Marked expected by an operator on an earlier '
            f'report, and not grown since.</p>\n<ul class="notes expected">{items}</ul>'
        )
        content += _html_bands(report, withheld, "expected")
    if notes:
        items = "".join(f"<li>{_esc(note)}</li>" for note in notes)
        content += f'\n<h3>Notes</h3>\n<ul class="notes">{items}</ul>'
    return _html_section("Anomalies", content)


def _html_bands(report: Document, findings: Sequence[Mapping[str, Any]], prefix: str) -> str:
    """Each finding's recent weeks with the band of ordinary values it left."""
    figures = []
    for i, finding in enumerate(findings):
        chart = band_chart(finding, report, f"{prefix}-{i}")
        if chart:
            caption = f"{_severity(finding) or 'unrated'} · {_text(finding.get('message'))}"
            figures.append(
                f'<figure class="band">\n<figcaption>{_esc(caption)}</figcaption>\n{chart}\n</figure>'
            )
    return f'\n<div class="bands">\n{"".join(figures)}\n</div>' if figures else ""


def _expected(report: Document) -> list[Mapping[str, Any]]:
    found = report.get("expectedAnomalies")
    return [a for a in found if isinstance(a, Mapping)] if isinstance(found, list) else []


def _mark_note(anomaly: Mapping[str, Any]) -> str:
    mark = anomaly.get("mark")
    if not isinstance(mark, Mapping):
        return ""
    note = f": {_text(mark.get('note'))}" if mark.get("note") else ""
    return f' <span class="kind">(marked expected in {_esc(mark.get("reportId"))}{_esc(note)})</span>'


def _html_anomaly_row(anomaly: Mapping[str, Any]) -> str:
    severity = _severity(anomaly)
    badge_class = severity if severity in _SEVERITY_RANK else "other"
    kind = " · ".join(
        _text(anomaly.get(f)).replace("_", " ") for f in ("kind", "dimension", "key") if anomaly.get(f)
    )
    return (
        f'<tr><td><span class="badge {badge_class}">{_esc(severity or "unrated")}</span></td>'
        f'<td class="message">{_esc(anomaly.get("message"))}<div class="kind">{_esc(kind)}</div>'
        f"{_mark_note(anomaly)}</td>"
        f'<td class="num">{_esc(_measure(anomaly, "observed"))}</td>'
        f'<td class="num">{_esc(_measure(anomaly, "expected"))}</td>'
        f'<td class="num">{_esc(_score(anomaly))}</td></tr>'
    )


def _figure(report: Document, dimension: str, field: str) -> str:
    chart = _failure_chart(report, dimension, field)
    return f"<figure>\n<figcaption>By {_esc(dimension)}</figcaption>\n{chart}\n</figure>"


def _html_breakdowns(report: Document) -> str:
    tables = [_html_breakdown(report, dimension, field) for dimension, field in DIMENSIONS]
    times = _generation_times(report)
    if times:
        rows = "".join(
            f'<tr><td class="key">{_esc(model)}</td><td class="num">{_esc(_duration(p50))}</td>'
            f'<td class="num">{_esc(_duration(p95))}</td></tr>'
            for model, (p50, p95) in times.items()
        )
        tables.append(
            "<div><h3>Generation time by model</h3><table><thead><tr><th>Model</th>"
            f'<th class="num">p50</th><th class="num">p95</th></tr></thead><tbody>{rows}</tbody>'
            "</table></div>"
        )
    return _html_section("Breakdown", f'<div class="tables">\n{"".join(tables)}\n</div>')


def _html_breakdown(report: Document, dimension: str, field: str) -> str:
    rows, jumps = _rows(report, field), _jumps(report, dimension)
    heading = f"<h3>By {_esc(dimension)}</h3>"
    if not rows:
        return f'<div>{heading}<p class="kind">No requests.</p></div>'
    body = "".join(_html_breakdown_row(row, row.key in jumps) for row in rows)
    return (
        f"<div>{heading}<table><thead><tr><th>{_esc(dimension.capitalize())}</th>"
        '<th class="num">Requests</th><th class="num">Completed</th><th class="num">Failed</th>'
        f'<th class="num">Failure rate</th></tr></thead><tbody>{body}</tbody></table></div>'
    )


def _html_breakdown_row(row: _Row, jumped: bool) -> str:
    rate = _esc(_percent(row.failure_rate)) + (" ▲" if jumped else "")
    opening = '<tr class="jump">' if jumped else "<tr>"
    return (
        f'{opening}<td class="key">{_esc(row.key)}</td>'
        f'<td class="num">{_esc(_count(row.total))}</td>'
        f'<td class="num">{_esc(_count(row.completed))}</td>'
        f'<td class="num">{_esc(_count(row.failed))}</td><td class="num rate">{rate}</td></tr>'
    )
