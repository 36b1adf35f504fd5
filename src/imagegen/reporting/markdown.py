"""A report document as markdown: summary, anomalies, notes, breakdowns and generation times.

Every string that comes from a document (ids, keys, messages, notes) is made inert: one line, no
HTML, no emphasis, links or table breaks.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imagegen.reporting import read, show

_MD_DOTS = {"critical": "🔴", "warning": "🟠", "info": "🔵"}


_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}#|!~])")


def _md(value: Any) -> str:
    """Data as inert markdown text: one line, no HTML, no emphasis, links or table breaks."""
    one_line = " ".join(read.text(value).split())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def _md_table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """A pipe table; `align` has one letter per column, l or r."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [f"| {' | '.join(cells)} |" for cells in (header, rule, *rows)]


def render_markdown(report: read.Document) -> str:
    """The report as markdown: summary, anomalies, notes, breakdowns and generation times."""
    lines = [
        f"# imagegen report {_md(report.get('id'))}",
        "",
        f"**Period:** {_md(show.period(report))}  ",
        f"**Generated:** {_md(show.generated(report))} · **Baseline:** {_md(show.baseline(report))}",
        "",
        "## Summary",
        "",
        *_md_table(("Metric", "Value"), "lr", _md_summary(report)),
        "",
        *_md_anomalies(report),
    ]
    for dimension, field in read.DIMENSIONS:
        lines += ["", f"## By {dimension}", "", *_md_breakdown(report, dimension, field)]
    times = read.generation_times(report)
    if times:
        rows = ((_md(model), show.duration(p50), show.duration(p95)) for model, (p50, p95) in times.items())
        lines += ["", "## Generation time by model", "", *_md_table(("Model", "p50", "p95"), "lrr", rows)]
    return "\n".join(lines) + "\n"


def _md_summary(report: read.Document) -> list[tuple[str, str]]:
    return [(label, show.summary_value(report, field)) for label, field in read.SUMMARY]


def _md_anomalies(report: read.Document) -> list[str]:
    anomalies, notes = read.anomalies(report), read.notes(report)
    if not anomalies:
        lines = ["## Anomalies", "", "No anomalies."]
    else:
        lines = [f"## Anomalies ({len(anomalies)})", ""]
        lines += [f"- {_md_anomaly(a)}" for a in anomalies]
    withheld = read.expected(report)
    if withheld:
        lines += ["", "## Expected, not alarmed", ""]
        lines += [f"- {_md_anomaly(a)}" for a in withheld]
    if notes:
        lines += ["", "## Notes", "", *(f"- {_md(note)}" for note in notes)]
    return lines


def _md_anomaly(anomaly: Mapping[str, Any]) -> str:
    severity = read.severity(anomaly)
    badge = f"{_MD_DOTS.get(severity, '⚪')} **{_md(severity.upper() or 'UNRATED')}**"
    numbers = (
        f"observed {show.measure(anomaly, 'observed')}, expected {show.measure(anomaly, 'expected')}, "
        f"score {show.score(anomaly)}"
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
    lower, upper = read.number(anomaly.get("lower")), read.number(anomaly.get("upper"))
    shown = [None if v is None else show.measure({**anomaly, "edge": v}, "edge") for v in (lower, upper)]
    if shown[0] is not None and shown[1] is not None:
        return f"{shown[0]} to {shown[1]}"
    if shown[1] is not None:
        return f"up to {shown[1]}"
    return "" if shown[0] is None else f"from {shown[0]}"


def _md_breakdown(report: read.Document, dimension: str, field: str) -> list[str]:
    rows = read.rows(report, field)
    if not rows:
        return ["_No requests._"]
    jumps = read.jumps(report, dimension)
    header = (dimension.capitalize(), "Requests", "Completed", "Failed", "Failure rate")
    return _md_table(header, "lrrrr", (_md_breakdown_row(row, jumps.get(row.key)) for row in rows))


def _md_breakdown_row(row: read.Row, jump: Mapping[str, Any] | None) -> tuple[str, ...]:
    rate = show.percent(row.failure_rate)
    if jump is not None:
        rate = f"**{rate}** {_MD_DOTS.get(read.severity(jump), '⚪')} jump"
    return (_md(row.key), show.count(row.total), show.count(row.completed), show.count(row.failed), rate)
