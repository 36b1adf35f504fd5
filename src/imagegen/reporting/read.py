"""Reading a report document for people, defensively.

Older documents lack newer fields (`canceledRequests`, `generationTimeMs`), rates are null when
nothing finished, and a number that is not a number is read as None (shown as "n/a") rather than
trusted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def number(value: Any) -> float | None:
    """A finite number from a document, or None (null, missing, or not a number at all)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Row:
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


def rows(report: Document, field: str) -> list[Row]:
    """A breakdown, worst failure rate first; keys with no rate (nothing finished) last."""
    data = report.get(field)
    if not isinstance(data, Mapping):
        return []
    rows = [
        Row(
            str(key),
            number(entry.get("total")),
            number(entry.get("completed")),
            number(entry.get("failed")),
            number(entry.get("failureRate")),
        )
        for key, entry in data.items()
        if isinstance(entry, Mapping)
    ]
    return sorted(rows, key=lambda r: (r.failure_rate is None, -(r.failure_rate or 0), r.key))


def anomalies(report: Document) -> list[Mapping[str, Any]]:
    found = report.get("anomalies")
    if not isinstance(found, list):
        return []
    return [a for a in found if isinstance(a, Mapping)]


def notes(report: Document) -> list[str]:
    notes = report.get("notes")
    return [str(note) for note in notes] if isinstance(notes, list) else []


def severity(anomaly: Mapping[str, Any]) -> str:
    return text(anomaly.get("severity")).lower()


def jumps(report: Document, dimension: str) -> dict[str, Mapping[str, Any]]:
    """The keys of one dimension with a failure-rate jump, and the anomaly that says so."""
    return {
        text(a.get("key")): a
        for a in anomalies(report)
        if a.get("kind") == "failure_rate_jump" and a.get("dimension") == dimension
    }


def generation_times(report: Document) -> dict[str, tuple[float | None, float | None]]:
    """generationTimeMs as {model: (p50, p95)}; empty when the document predates it."""
    times = report.get("generationTimeMs")
    if not isinstance(times, Mapping):
        return {}
    return {
        str(model): (number(t.get("p50")), number(t.get("p95")))
        for model, t in sorted(times.items(), key=lambda item: str(item[0]))
        if isinstance(t, Mapping)
    }


def instant(value: Any) -> datetime | None:
    try:
        instant = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


def earlier(report: Document, history: Sequence[Document]) -> list[Document]:
    # A history that already holds the current report (a re-run) must not show it twice.
    return [d for d in history if isinstance(d, Mapping) and d.get("id") != report.get("id")]


def expected(report: Document) -> list[Mapping[str, Any]]:
    found = report.get("expectedAnomalies")
    return [a for a in found if isinstance(a, Mapping)] if isinstance(found, list) else []
