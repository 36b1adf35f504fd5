"""A document's numbers, dates and findings as text for people.

Plain text: whatever goes into markup goes through `esc` first, since keys and messages are
whatever clients sent.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from imagegen.reporting import read

NA = "n/a"


def trim(number: float, decimals: int) -> str:
    text = f"{number:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def count(value: Any) -> str:
    number = read.number(value)
    return NA if number is None else trim(number, 1)


def percent(value: Any) -> str:
    number = read.number(value)
    return NA if number is None else f"{number:.1f}%"


def precise_percent(value: Any) -> str:
    # The headline success rate keeps the document's 2 decimals: 99.95% is not 100.0%.
    number = read.number(value)
    return NA if number is None else f"{trim(number, 2)}%"


def compact(number: float) -> str:
    """1234 -> 1.2k, for chart labels."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            return f"{trim(number / limit, 1)}{suffix}"
    return trim(number, 1)


def duration(value: float | None) -> str:
    if value is None:
        return NA
    return f"{trim(value / 1000, 2)} s" if value >= 1000 else f"{trim(value, 0)} ms"


def _is_rate(anomaly: Mapping[str, Any]) -> bool:
    return read.text(anomaly.get("metric")).endswith("Rate")


def measure(anomaly: Mapping[str, Any], field: str) -> str:
    value = anomaly.get(field)
    if _is_rate(anomaly) or anomaly.get("metric") == "share":
        return percent(value)
    if anomaly.get("metric") == "creditsPerRequest":
        number = read.number(value)
        return NA if number is None else f"{number:.2f}"
    return count(value)


def score(anomaly: Mapping[str, Any]) -> str:
    score = read.number(anomaly.get("score"))
    return NA if score is None else f"{score:.1f}"


def when(value: Any) -> str:
    if value is None:
        return NA
    instant = read.instant(value)
    return read.text(value) if instant is None else f"{instant:%a %d %b %Y %H:%M}"


def period(report: read.Document) -> str:
    start, end = report.get("periodStart"), report.get("periodEnd")
    return f"{when(start)} → {when(end)} UTC"


def generated(report: read.Document) -> str:
    return f"{when(report.get('generatedAt'))} UTC"


def baseline(report: read.Document) -> str:
    weeks = read.number(report.get("baselineWeeks"))
    if weeks is None:
        return NA
    return f"{trim(weeks, 0)} week{'' if weeks == 1 else 's'} of history"


def tally(anomalies: Sequence[Mapping[str, Any]]) -> str:
    """ "3 anomalies: 1 critical, 2 warning"."""
    by: dict[str, int] = {}
    for anomaly in anomalies:
        by[read.severity(anomaly)] = by.get(read.severity(anomaly), 0) + 1
    parts = ", ".join(
        f"{n} {severity or 'unrated'}" for severity, n in sorted(by.items(), key=_severity_order)
    )
    plural = "y" if len(anomalies) == 1 else "ies"
    return f"{len(anomalies)} anomal{plural}: {parts}"


def _severity_order(item: tuple[str, int]) -> int:
    return read.SEVERITY_RANK.get(item[0], len(read.SEVERITY_RANK))


def summary_value(report: read.Document, field: str) -> str:
    if field == "successRate":
        return precise_percent(report.get(field))
    if field not in report:
        return NA  # an older document without this field: not a zero
    return count(report.get(field))


def esc(value: Any) -> str:
    return html.escape(read.text(value), quote=True)
