"""A report document as a self-contained HTML page with charts.

The page has to open offline, as a file attachment as well as in a browser: one file, inline CSS,
hand-drawn SVG, no JavaScript, nothing fetched (fonts included). Every string that comes from a
document (ids, keys, messages, notes) is escaped, since style, size and color keys are whatever
clients sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from imagegen.reporting import read, show
from imagegen.reporting.bands import band_chart
from imagegen.reporting.failures import failure_chart
from imagegen.reporting.trend import trend_chart

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


def render_html(report: read.Document, history: Sequence[read.Document] = ()) -> str:
    """A complete, self-contained HTML5 page for one report.

    `history` holds the earlier weekly report documents, oldest first (may be empty); the weekly
    trend chart draws them followed by `report`.
    """
    earlier = read.earlier(report, history)
    sections = [
        _html_summary(report, earlier[-1] if earlier else None),
        _html_anomalies(report),
        _html_section("Weekly trend", trend_chart(report, history)),
        _html_section("Failure rate", "".join(_figure(report, d, f) for d, f in read.CHARTED_DIMENSIONS)),
        _html_breakdowns(report),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>imagegen report {show.esc(report.get('id'))}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{_html_header(report)}\n" + "\n".join(sections) + "\n"
        "<footer>Generated by imagegen. All times are UTC; a period includes its start and "
        "excludes its end. Hover a chart mark for details.</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def _html_section(title: str, content: str) -> str:
    return f"<section>\n<h2>{show.esc(title)}</h2>\n{content}\n</section>"


def _html_header(report: read.Document) -> str:
    anomalies = read.anomalies(report)
    if anomalies:
        status = f'<p class="status alarm">⚠ {show.esc(show.tally(anomalies))}</p>'
    else:
        status = '<p class="status calm">✓ No anomalies</p>'
    return (
        "<header>\n"
        '<p class="eyebrow">imagegen · weekly report</p>\n'
        f"<h1>{show.esc(report.get('id'))}</h1>\n"
        f'<p class="meta"><strong>Period</strong> {show.esc(show.period(report))}</p>\n'
        f'<p class="meta"><strong>Generated</strong> {show.esc(show.generated(report))} · '
        f"<strong>Baseline</strong> {show.esc(show.baseline(report))}</p>\n"
        f"{status}\n</header>"
    )


def _html_summary(report: read.Document, previous: read.Document | None) -> str:
    cards = []
    for label, field in read.SUMMARY:
        delta = _delta(report, previous, field) if previous is not None else ""
        delta_html = f'<div class="delta">{show.esc(delta)}</div>' if delta else ""
        cards.append(
            f'<div class="card"><div class="label">{show.esc(label)}</div>'
            f'<div class="value">{show.esc(show.summary_value(report, field))}</div>{delta_html}</div>'
        )
    since = ""
    if previous is not None:
        previous_id = show.esc(previous.get("id"))
        since = f'<p class="meta lead">Changes are from the previous report, {previous_id}.</p>\n'
    return _html_section("Summary", f'{since}<div class="cards">\n{"".join(cards)}\n</div>')


def _delta(report: read.Document, previous: read.Document, field: str) -> str:
    """The change from the previous report: in points for the success rate, in percent otherwise."""
    now, before = read.number(report.get(field)), read.number(previous.get(field))
    if now is None or before is None:
        return ""
    if field == "successRate":
        return f"{_arrow(now - before)} {abs(now - before):.1f} pts"
    if before == 0:
        return "" if now == 0 else "▲ from 0"
    change = 100 * (now - before) / before
    return f"{_arrow(change)} {show.trim(abs(change), 0 if abs(change) >= 10 else 1)}%"


def _arrow(change: float) -> str:
    return "▲" if change > 0 else "▼" if change < 0 else "="


def _html_anomalies(report: read.Document) -> str:
    anomalies, notes = read.anomalies(report), read.notes(report)
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
    withheld = read.expected(report)
    if withheld:
        items = "".join(f"<li>{show.esc(a.get('message'))}{_mark_note(a)}</li>" for a in withheld)
        content += (
            '\n<h3>Expected, not alarmed</h3>\n<p class="meta">Marked expected by an operator on an earlier '
            f'report, and not grown since.</p>\n<ul class="notes expected">{items}</ul>'
        )
        content += _html_bands(report, withheld, "expected")
    if notes:
        items = "".join(f"<li>{show.esc(note)}</li>" for note in notes)
        content += f'\n<h3>Notes</h3>\n<ul class="notes">{items}</ul>'
    return _html_section("Anomalies", content)


def _html_bands(report: read.Document, findings: Sequence[Mapping[str, Any]], prefix: str) -> str:
    """Each finding's recent weeks with the band of ordinary values it left."""
    figures = []
    for i, finding in enumerate(findings):
        chart = band_chart(finding, report, f"{prefix}-{i}")
        if chart:
            caption = f"{read.severity(finding) or 'unrated'} · {read.text(finding.get('message'))}"
            figures.append(
                f'<figure class="band">\n<figcaption>{show.esc(caption)}</figcaption>\n{chart}\n</figure>'
            )
    return f'\n<div class="bands">\n{"".join(figures)}\n</div>' if figures else ""


def _mark_note(anomaly: Mapping[str, Any]) -> str:
    mark = anomaly.get("mark")
    if not isinstance(mark, Mapping):
        return ""
    note = f": {read.text(mark.get('note'))}" if mark.get("note") else ""
    return f' <span class="kind">(marked expected in {show.esc(mark.get("reportId"))}{show.esc(note)})</span>'


def _html_anomaly_row(anomaly: Mapping[str, Any]) -> str:
    severity = read.severity(anomaly)
    badge_class = severity if severity in read.SEVERITY_RANK else "other"
    kind = " · ".join(
        read.text(anomaly.get(f)).replace("_", " ") for f in ("kind", "dimension", "key") if anomaly.get(f)
    )
    return (
        f'<tr><td><span class="badge {badge_class}">{show.esc(severity or "unrated")}</span></td>'
        f'<td class="message">{show.esc(anomaly.get("message"))}<div class="kind">{show.esc(kind)}</div>'
        f"{_mark_note(anomaly)}</td>"
        f'<td class="num">{show.esc(show.measure(anomaly, "observed"))}</td>'
        f'<td class="num">{show.esc(show.measure(anomaly, "expected"))}</td>'
        f'<td class="num">{show.esc(show.score(anomaly))}</td></tr>'
    )


def _figure(report: read.Document, dimension: str, field: str) -> str:
    chart = failure_chart(report, dimension, field)
    return f"<figure>\n<figcaption>By {show.esc(dimension)}</figcaption>\n{chart}\n</figure>"


def _html_breakdowns(report: read.Document) -> str:
    tables = [_html_breakdown(report, dimension, field) for dimension, field in read.DIMENSIONS]
    times = read.generation_times(report)
    if times:
        rows = "".join(
            f'<tr><td class="key">{show.esc(model)}</td><td class="num">{show.esc(show.duration(p50))}</td>'
            f'<td class="num">{show.esc(show.duration(p95))}</td></tr>'
            for model, (p50, p95) in times.items()
        )
        tables.append(
            "<div><h3>Generation time by model</h3><table><thead><tr><th>Model</th>"
            f'<th class="num">p50</th><th class="num">p95</th></tr></thead><tbody>{rows}</tbody>'
            "</table></div>"
        )
    return _html_section("Breakdown", f'<div class="tables">\n{"".join(tables)}\n</div>')


def _html_breakdown(report: read.Document, dimension: str, field: str) -> str:
    rows, jumps = read.rows(report, field), read.jumps(report, dimension)
    heading = f"<h3>By {show.esc(dimension)}</h3>"
    if not rows:
        return f'<div>{heading}<p class="kind">No requests.</p></div>'
    body = "".join(_html_breakdown_row(row, row.key in jumps) for row in rows)
    return (
        f"<div>{heading}<table><thead><tr><th>{show.esc(dimension.capitalize())}</th>"
        '<th class="num">Requests</th><th class="num">Completed</th><th class="num">Failed</th>'
        f'<th class="num">Failure rate</th></tr></thead><tbody>{body}</tbody></table></div>'
    )


def _html_breakdown_row(row: read.Row, jumped: bool) -> str:
    rate = show.esc(show.percent(row.failure_rate)) + (" ▲" if jumped else "")
    opening = '<tr class="jump">' if jumped else "<tr>"
    return (
        f'{opening}<td class="key">{show.esc(row.key)}</td>'
        f'<td class="num">{show.esc(show.count(row.total))}</td>'
        f'<td class="num">{show.esc(show.count(row.completed))}</td>'
        f'<td class="num">{show.esc(show.count(row.failed))}</td><td class="num rate">{rate}</td></tr>'
    )
