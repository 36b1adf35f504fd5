"""Reports rendered as markdown and as a self-contained HTML page, on hand-built documents."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest

from imagegen.reporting import render_html, render_markdown

HOSTILE = "<script>alert('x')</script>"
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base", "embed"}


def breakdown(total: int, completed: int, failed: int) -> dict[str, Any]:
    finished = completed + failed
    rate = None if finished == 0 else round(100 * failed / finished, 2)
    return {"total": total, "completed": completed, "failed": failed, "failureRate": rate}


def report(week: int = 47, requests: int = 1350, credits: int = 5159, **fields: Any) -> dict[str, Any]:
    """A weekly report document shaped like domain.reports.report_document's."""
    document: dict[str, Any] = {
        "id": f"2026-W{week:02d}",
        "periodStart": "2026-11-16T00:00:00Z",
        "periodEnd": "2026-11-23T00:00:00Z",
        "generatedAt": "2026-11-23T00:00:04Z",
        "totalRequests": requests,
        "completedRequests": 1165,
        "failedRequests": 168,
        "canceledRequests": 17,
        "totalCreditsSpent": credits,
        "totalCreditsRefunded": 735,
        "successRate": 87.4,
        "byModel": {"flux-pro": breakdown(650, 570, 65), "sdxl-turbo": breakdown(700, 595, 103)},
        "byStyle": {
            "anime": breakdown(500, 465, 30),
            "realistic": breakdown(588, 548, 33),
            "sketch": breakdown(262, 152, 105),
        },
        "bySize": {"512x512": breakdown(1350, 1165, 168)},
        "byColor": {"vibrant": breakdown(1350, 1165, 168)},
        "uniqueUsers": 96,
        "generationTimeMs": {"flux-pro": {"p50": 4200, "p95": 9800}, "sdxl-turbo": {"p50": 850, "p95": 1900}},
        "anomalies": [],
        "notes": [],
        "baselineWeeks": 8,
    }
    document.update(fields)
    return document


SKETCH_JUMP = {
    "kind": "failure_rate_jump",
    "metric": "failureRate",
    "dimension": "style",
    "key": "sketch",
    "observed": 40.86,
    "expected": 4.39,
    "score": 11.9,
    "severity": "critical",
    "message": "Failure rate of style 'sketch' 40.9% vs 4.4% (+36.5 points), the 8-week median",
}
SPIKE = {
    "kind": "spike",
    "metric": "totalRequests",
    "dimension": None,
    "key": None,
    "observed": 4350,
    "expected": 1240,
    "score": 9.1,
    "severity": "critical",
    "message": "Requests 3.5x the 5-week median (4350 vs 1240)",
}


def empty_report() -> dict[str, Any]:
    return report(
        requests=0,
        credits=0,
        completedRequests=0,
        failedRequests=0,
        canceledRequests=0,
        totalCreditsRefunded=0,
        successRate=None,
        byModel={},
        byStyle={},
        bySize={},
        byColor={},
        uniqueUsers=0,
        generationTimeMs={},
        notes=["no week of history; anomaly detection needs 3"],
        baselineWeeks=0,
    )


def history() -> list[dict[str, Any]]:
    """Eight earlier weeks, the fourth (2026-W42) a spike."""
    weeks = []
    for i, week in enumerate(range(39, 47)):
        spike = week == 42
        weeks.append(
            report(
                week,
                requests=4350 if spike else 1200 + 10 * i,
                credits=18120 if spike else 5000 + 20 * i,
                anomalies=[SPIKE] if spike else [],
            )
        )
    return weeks


# ---------------------------------------------------------------------------------------------
# A small DOM, to check the page's structure rather than grep its text
# ---------------------------------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def all(self, tag: str, cls: str | None = None) -> list[Node]:
        found = [n for n in self.children if n.tag == tag and (cls is None or cls in n.classes)]
        return found + [m for n in self.children for m in n.all(tag, cls)]

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    @property
    def all_text(self) -> str:
        return self.text + "".join(child.all_text for child in self.children)

    def title(self) -> str:
        """The text of this element's own <title> child (an SVG tooltip)."""
        return next((c.all_text for c in self.children if c.tag == "title"), "")


class StrictParser(HTMLParser):
    """Builds a Node tree and records every tag that closes out of order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if len(self.stack) == 1 or self.stack[-1].tag != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1].tag}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse(page: str) -> Node:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == []
    assert [n.tag for n in parser.stack] == ["#document"], "unclosed elements"
    return parser.root


def chart(page: Node, name: str) -> Node:
    svgs = [svg for svg in page.all("svg") if svg.attrs.get("aria-labelledby", "").startswith(f"{name}-")]
    assert len(svgs) == 1
    return svgs[0]


def bar_keys(svg: Node, cls: str) -> list[str]:
    """The keys whose bar carries `cls`, read from the tooltip of each bar group."""
    return [bar.title().splitlines()[0] for bar in svg.all("g", "bar") if bar.all("rect", cls)]


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def test_markdown_has_the_header_and_the_summary_numbers() -> None:
    text = render_markdown(report())

    assert text.startswith("# imagegen report 2026-W47\n")
    assert "Mon 16 Nov 2026 00:00 → Mon 23 Nov 2026 00:00 UTC" in text
    for row in (
        "| Requests | 1,350 |",
        "| Completed | 1,165 |",
        "| Failed | 168 |",
        "| Canceled | 17 |",
        "| Success rate | 87.4% |",
        "| Credits spent | 5,159 |",
        "| Credits refunded | 735 |",
        "| Unique users | 96 |",
    ):
        assert row in text


def test_markdown_lists_anomalies_with_severity_badges_and_their_numbers() -> None:
    text = render_markdown(report(anomalies=[SKETCH_JUMP]))

    assert "## Anomalies (1)" in text
    line = next(line for line in text.splitlines() if "Failure rate of style" in line)
    assert line.startswith("- 🔴 **CRITICAL** ")
    assert "'sketch' 40.9% vs 4.4% (+36.5 points)" in line
    assert "observed 40.9%, expected 4.4%, score 11.9" in line


def test_markdown_says_no_anomalies_and_gives_the_notes() -> None:
    text = render_markdown(report(notes=["only 2 weeks of history; anomaly detection needs 3"]))

    assert "No anomalies." in text
    assert "- only 2 weeks of history; anomaly detection needs 3" in text


def test_markdown_tables_break_down_every_dimension_with_failure_rates() -> None:
    text = render_markdown(report(anomalies=[SKETCH_JUMP]))

    for heading in ("## By model", "## By style", "## By size", "## By color"):
        assert heading in text
    assert "| sketch | 262 | 152 | 105 | **40.9%** 🔴 jump |" in text
    assert "| anime | 500 | 465 | 30 | 6.1% |" in text


def test_markdown_gives_generation_times_only_when_the_document_has_them() -> None:
    with_times = render_markdown(report())
    older = report()
    del older["generationTimeMs"]

    assert "| flux-pro | 4.2 s | 9.8 s |" in with_times
    assert "| sdxl-turbo | 850 ms | 1.9 s |" in with_times
    assert "Generation time" not in render_markdown(older)


def test_markdown_of_an_empty_report_shows_no_rate_rather_than_zero() -> None:
    text = render_markdown(empty_report())

    assert "| Requests | 0 |" in text
    assert "| Success rate | n/a |" in text
    assert "_No requests._" in text
    assert "no week of history" in text


def test_markdown_keeps_hostile_keys_and_messages_inert() -> None:
    hostile = dict(SKETCH_JUMP, key=HOSTILE, message=f"rate of {HOSTILE} | *jumped*")
    text = render_markdown(
        report(byStyle={HOSTILE: breakdown(10, 5, 5)}, anomalies=[hostile], notes=[HOSTILE])
    )

    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert r"\| \*jumped\*" in text  # neither a table break nor emphasis
    assert all(
        line.count("|") - line.count(r"\|") in (0, 6) for line in text.splitlines() if "script" in line
    )


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------


def test_html_is_a_complete_page_that_parses_with_every_tag_closed() -> None:
    page = render_html(report(anomalies=[SKETCH_JUMP]), history())

    assert page.startswith("<!DOCTYPE html>")
    root = parse(page)
    assert [n.tag for n in root.children] == ["html"]
    assert root.all("title")[0].all_text == "imagegen report 2026-W47"


def test_html_draws_an_accessible_svg_for_each_chart() -> None:
    root = parse(render_html(report(), history()))

    for name in ("trend", "failure-model", "failure-style", "failure-size"):
        svg = chart(root, name)
        assert svg.attrs["role"] == "img"
        assert svg.children[0].tag == "title" and svg.children[0].all_text
        assert svg.children[1].tag == "desc"
    assert len(root.all("svg")) == 4


def test_html_needs_nothing_from_the_network_and_runs_no_script() -> None:
    page = render_html(report(anomalies=[SKETCH_JUMP]), history())
    root = parse(page)

    assert root.all("script") == [] and root.all("link") == [] and root.all("img") == []
    assert re.findall(r"https?://[^\s\"']*", page) == ["http://www.w3.org/2000/svg"] * 4  # xmlns only
    assert "url(" not in page and "@import" not in page


def test_html_shows_the_summary_and_the_change_from_the_previous_week() -> None:
    root = parse(render_html(report(), history()))
    cards = {c.all("div", "label")[0].all_text: c for c in root.all("div", "card")}

    assert cards["Requests"].all("div", "value")[0].all_text == "1,350"
    assert cards["Success rate"].all("div", "value")[0].all_text == "87.4%"
    assert cards["Requests"].all("div", "delta")[0].all_text == "▲ 6.3%"  # from 1,270 in W46
    assert "previous report, 2026-W46" in root.all_text


def test_html_marks_the_weeks_that_had_anomalies_and_lists_their_messages() -> None:
    root = parse(render_html(report(anomalies=[SKETCH_JUMP]), history()))
    trend = chart(root, "trend")
    marked = trend.all("circle", "anomalous-week") + trend.all("rect", "anomalous-week")

    weeks = {mark.title().splitlines()[0].split(":")[0] for mark in marked}
    assert weeks == {"2026-W42", "2026-W47"}
    assert all(mark.attrs["fill"] in ("#dc2626", "#fee2e2") for mark in marked)
    tooltips = " ".join(mark.title() for mark in marked)
    assert SPIKE["message"] in tooltips and SKETCH_JUMP["message"] in tooltips
    assert len(trend.all("polyline")) == 2  # requests and credits


def test_html_highlights_and_annotates_the_keys_with_a_failure_rate_jump() -> None:
    root = parse(render_html(report(anomalies=[SKETCH_JUMP]), history()))
    styles = chart(root, "failure-style")

    assert bar_keys(styles, "jump") == ["style sketch"]
    sketch = next(bar for bar in styles.all("g", "bar") if bar.all("rect", "jump"))
    assert sketch.all("rect", "jump")[0].attrs["fill"] == "#dc2626"
    assert "▲ +36.5 pts vs median 4.4%" in sketch.all_text
    assert SKETCH_JUMP["message"] in sketch.title()
    assert bar_keys(chart(root, "failure-model"), "jump") == []


def test_html_shows_the_anomalies_table_with_observed_expected_and_score() -> None:
    root = parse(render_html(report(anomalies=[SKETCH_JUMP, SPIKE]), []))
    rows = root.all("section")[1].all("tr")[1:]

    cells = [[td.all_text for td in row.all("td")] for row in rows]
    assert cells[0][0] == "critical" and cells[0][2:] == ["40.9%", "4.4%", "11.9"]
    assert cells[1][2:] == ["4,350", "1,240", "9.1"]
    assert "2 anomalies: 2 critical" in root.all("header")[0].all_text


def test_html_escapes_every_string_that_comes_from_the_document() -> None:
    hostile_jump = dict(SKETCH_JUMP, key=HOSTILE, message=HOSTILE, severity=HOSTILE)
    hostile = report(
        id=HOSTILE,
        byModel={HOSTILE: breakdown(10, 5, 5)},
        byStyle={HOSTILE: breakdown(10, 5, 5)},
        byColor={HOSTILE: breakdown(10, 5, 5)},
        generationTimeMs={HOSTILE: {"p50": 1, "p95": 2}},
        anomalies=[hostile_jump],
        notes=[HOSTILE],
        periodStart=HOSTILE,
    )
    past = report(46, id=f'"><b>{HOSTILE}', anomalies=[dict(SPIKE, message=HOSTILE)])
    page = render_html(hostile, [past])

    assert "<script" not in page and "<b>" not in page
    assert page.count("&lt;script&gt;") >= 10
    root = parse(page)
    assert root.all("script") == [] and root.all("b") == []
    assert HOSTILE in chart(root, "failure-style").all_text  # shown as text, in a tooltip


def test_html_renders_an_empty_report_without_history() -> None:
    root = parse(render_html(empty_report(), []))

    assert len(root.all("svg")) == 4
    assert "No anomalies." in root.all_text
    assert "no week of history" in root.all_text
    cards = {
        c.all("div", "label")[0].all_text: c.all("div", "value")[0].all_text for c in root.all("div", "card")
    }
    assert cards["Requests"] == "0" and cards["Success rate"] == "n/a"
    assert "No requests in this period." in chart(root, "failure-style").all_text
    assert root.all("div", "delta") == []  # nothing to compare with
    axis = [t.text for t in chart(root, "trend").all("g", "panel")[0].all("text")[1:]]
    assert axis[:5] == ["0", "1", "2", "3", "4"]  # counts: whole-number ticks, not 0.25 steps


def test_html_with_one_week_draws_a_single_point_and_no_line() -> None:
    trend = chart(parse(render_html(report(), [])), "trend")

    assert trend.all("polyline") == []
    assert len(trend.all("circle")) >= 2  # one per panel, besides the legend's
    assert "2026-W47" in trend.all_text


def test_html_draws_a_rerun_report_once_even_when_history_holds_it() -> None:
    current = report()
    trend = chart(parse(render_html(current, [*history(), current])), "trend")

    labels = [t.text for t in trend.all("g", "weeks")[0].all("text")]
    assert labels.count("2026-W47") == 1


def test_html_says_when_a_key_has_no_failure_rate() -> None:
    root = parse(render_html(report(byStyle={"anime": breakdown(3, 0, 0)}), []))

    assert "n/a: no finished requests" in chart(root, "failure-style").all_text


def test_html_shortens_very_long_keys_in_charts_and_keeps_them_whole_elsewhere() -> None:
    long_key = "watercolor-" * 20
    root = parse(render_html(report(byStyle={long_key: breakdown(40, 30, 10)}), []))
    bar = chart(root, "failure-style").all("g", "bar")[0]

    label = bar.all("text")[0]
    assert label.text.endswith("…") and len(label.text) <= 28
    assert long_key in bar.title()
    assert long_key in [td.all_text for td in root.all("td", "key")]


def test_html_reads_an_older_document_without_the_newer_fields() -> None:
    older = report(anomalies=[SKETCH_JUMP])
    for name in ("generationTimeMs", "canceledRequests", "byColor", "notes", "baselineWeeks"):
        del older[name]

    root = parse(render_html(older, history()))

    assert "Generation time" not in root.all_text
    cards = {
        c.all("div", "label")[0].all_text: c.all("div", "value")[0].all_text for c in root.all("div", "card")
    }
    assert cards["Canceled"] == "n/a"


@pytest.mark.parametrize("weeks", [2, 30])
def test_html_labels_a_readable_number_of_weeks(weeks: int) -> None:
    past = [report(week) for week in range(47 - weeks + 1, 47)]
    trend = chart(parse(render_html(report(), past)), "trend")

    labels = trend.all("g", "weeks")[0].all("text")
    assert 2 <= len(labels) <= 15
    assert "2026-W47" in labels[-2].all_text or "2026-W47" in labels[-1].all_text


# ---------------------------------------------------------------------------------------------
# Each finding's recent weeks and its band
# ---------------------------------------------------------------------------------------------

DRIFT = {
    "kind": "drift",
    "metric": "failureRate",
    "dimension": "size",
    "key": "1024x1792",
    "observed": 12.9,
    "expected": 5.0,
    "lower": None,
    "upper": 10.0,
    "score": 9.2,
    "method": "CUSUM excursion against the median of the 7 weeks before; the last 2 weeks pooled",
    "severity": "info",
    "since": "2026-W43",
    "message": "Failure rate of size '1024x1792' has been rising for 5 weeks (since 2026-W43)",
    "history": [5.1, 4.8, None, 4.9, 5.0, 5.3, 4.7, 7.0, 8.9, 10.8, 12.1, 13.6, 14.2],
}


def test_html_draws_each_findings_recent_weeks_with_the_band_it_left() -> None:
    root = parse(render_html(report(anomalies=[DRIFT, SPIKE]), []))

    band = chart(root, "finding-0")
    assert band.all("rect", "band") and band.all("line", "expected")
    assert [c.title() for c in band.all("circle", "this-week")] == ["14.2%"]
    assert len(band.all("polyline")) == 2  # a gap where a week had nothing to measure
    assert band.all("rect", "since")[0].title() == "since 2026-W43"
    assert "ordinary band no limit to 10.0%" in band.all("desc")[0].all_text
    labels = [t.all_text for t in band.all("text") if t.attrs.get("text-anchor") == "middle"]
    assert labels[-1] == "16 Nov"  # the period's own week, last
    assert len(root.all("figure", "band")) == 1  # the older finding has no history: no chart


def test_markdown_gives_each_findings_band_and_mark() -> None:
    marked = dict(DRIFT, mark={"reportId": "2026-W46", "note": "a new printer", "markedAt": "x"})

    text = render_markdown(report(anomalies=[marked], expectedAnomalies=[dict(SPIKE, mark=marked["mark"])]))

    assert "ordinary up to 10.0%" in text
    assert "_(marked expected in 2026-W46: a new printer)_" in text
    assert "## Expected, not alarmed" in text


def test_html_lists_the_findings_withheld_by_an_operators_mark() -> None:
    mark = {"reportId": "2026-W46", "note": HOSTILE, "markedAt": "2026-11-17T08:00:00Z"}
    root = parse(render_html(report(expectedAnomalies=[dict(DRIFT, mark=mark)]), []))

    withheld = root.all("ul", "expected")[0].all_text
    assert DRIFT["message"] in withheld and "marked expected in 2026-W46" in withheld
    assert HOSTILE in withheld  # as text
    assert chart(root, "expected-0").all("rect", "band")
