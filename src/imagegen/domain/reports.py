"""Reports: the periods they cover, and the report document (metrics and anomalies together).

Pure rules. The storage layer counts a period's requests with one GROUP BY and hands the rows to
`summarize` (domain/metrics.py); the service layer summarizes each of the preceding weeks
(`weeks_before`) the same way and calls `detect` (domain/anomalies/) with them as the baseline;
`report_document` is the JSON that is stored and served. The names of those modules are
re-exported here, where the rest of the code has always found them.

All instants are UTC and every period is half-open, [start, end). A naive datetime is read as UTC
(SQLite hands timestamps back naive).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from imagegen.domain.anomalies import (
    DEFAULT_THRESHOLDS,
    MAD_SCALE,
    SEVERITY_RANK,
    Anomaly,
    Detection,
    Mark,
    Severity,
    Thresholds,
    detect,
    mark,
    marks_in,
)
from imagegen.domain.metrics import DIMENSIONS, Breakdown, GroupCount, Metrics, summarize

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DIMENSIONS",
    "MAD_SCALE",
    "SEVERITY_RANK",
    "WEEK",
    "Anomaly",
    "Breakdown",
    "Detection",
    "FindingId",
    "GroupCount",
    "Mark",
    "Metrics",
    "Period",
    "Severity",
    "Thresholds",
    "as_utc",
    "between",
    "detect",
    "generated_at",
    "generation_times",
    "isoformat_z",
    "iso_week",
    "last_7_days",
    "mark",
    "marks_in",
    "percentile",
    "previous_week",
    "report_document",
    "set_mark",
    "summarize",
    "week_of",
    "weeks_before",
    "weeks_from",
]

WEEK = timedelta(days=7)

# ---------------------------------------------------------------------------------------------
# Periods
# ---------------------------------------------------------------------------------------------

_ISO_WEEK = re.compile(r"(\d{4})-W(\d{2})")


def as_utc(instant: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is taken to be UTC already."""
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


def isoformat_z(instant: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, e.g. 2026-11-16T00:00:00Z (microseconds only when present)."""
    instant = as_utc(instant)
    timespec = "seconds" if instant.microsecond == 0 else "microseconds"
    return instant.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


@dataclass(frozen=True)
class Period:
    """A report's span of time, [start, end) in UTC, and the report id it gives."""

    id: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", as_utc(self.start))
        object.__setattr__(self, "end", as_utc(self.end))
        if self.end <= self.start:
            raise ValueError(f"period {self.id!r} must end after it starts")

    def __contains__(self, instant: datetime) -> bool:
        return self.start <= as_utc(instant) < self.end


def iso_week(week: str) -> Period:
    """The ISO week named like "2026-W47": Monday 00:00 UTC to the next Monday."""
    match = _ISO_WEEK.fullmatch(week)
    if match is None:
        raise ValueError(f"invalid ISO week {week!r}: expected YYYY-Www, e.g. 2026-W47")
    year, number = int(match[1]), int(match[2])
    if year < 1:
        raise ValueError(f"invalid ISO week {week!r}: year must be 0001 or later")
    weeks = date(year, 12, 28).isocalendar().week  # 28 December is always in the last week
    if not 1 <= number <= weeks:
        raise ValueError(f"invalid ISO week {week!r}: {year} has weeks W01 to W{weeks}")
    try:
        return _week_starting(datetime.combine(date.fromisocalendar(year, number, 1), time(), UTC))
    except OverflowError:
        raise ValueError(f"invalid ISO week {week!r}: it ends after year 9999") from None


def week_of(instant: datetime) -> Period:
    """The ISO week that contains the instant."""
    instant = as_utc(instant)
    monday = instant.date() - timedelta(days=instant.weekday())
    return _week_starting(datetime.combine(monday, time(), UTC))


def previous_week(now: datetime) -> Period:
    """The last complete ISO week before `now`: what the Monday 00:00 UTC scheduled run covers."""
    return _week_starting(week_of(now).start - WEEK)


def last_7_days(now: datetime) -> Period:
    """The 7 days ending at `now` (a manual run), with id `report_YYYY-MM-DD` (the UTC date)."""
    now = as_utc(now)
    return Period(f"report_{now:%Y-%m-%d}", now - WEEK, now)


def weeks_before(period: Period, n: int) -> list[Period]:
    """The n 7-day periods right before `period.start`, oldest first: a detection baseline."""
    if n < 0:
        raise ValueError(f"the number of weeks must be 0 or more, not {n}")
    return [_seven_days_from(period.start - WEEK * i) for i in range(n, 0, -1)]


def between(start: datetime, end: datetime) -> Period:
    """A period of any length; an aligned ISO week gets the week's id."""
    start, end = as_utc(start), as_utc(end)
    if end - start == WEEK:
        return _seven_days_from(start)
    return Period(f"{start:%Y-%m-%d}..{end:%Y-%m-%d}", start, end)


def weeks_from(first: Period, last: Period) -> list[Period]:
    """The ISO weeks from `first` to `last`, both included (for backfills and catch-up)."""
    weeks, monday = [], first.start
    while monday <= last.start:
        weeks.append(_week_starting(monday))
        monday += WEEK
    return weeks


def _week_starting(monday: datetime) -> Period:
    year, week, _ = monday.isocalendar()
    return Period(f"{year}-W{week:02d}", monday, monday + WEEK)


def _seven_days_from(start: datetime) -> Period:
    if start.weekday() == 0 and start.time() == time():
        return _week_starting(start)
    end = start + WEEK
    return Period(f"{start:%Y-%m-%d}..{end:%Y-%m-%d}", start, end)


# ---------------------------------------------------------------------------------------------
# The report document
# ---------------------------------------------------------------------------------------------


def report_document(
    period: Period,
    metrics: Metrics,
    detection: Detection,
    generated_at: datetime,
    generation_time_ms: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The full report JSON, as stored and served (DESIGN.md, Reports)."""
    return {
        "id": period.id,
        "periodStart": isoformat_z(period.start),
        "periodEnd": isoformat_z(period.end),
        "generatedAt": isoformat_z(generated_at),
        **metrics.to_dict(),
        "generationTimeMs": {model: dict(times) for model, times in (generation_time_ms or {}).items()},
        "anomalies": [anomaly.to_dict() for anomaly in detection.anomalies],
        "expectedAnomalies": [anomaly.to_dict() for anomaly in detection.expected],
        "notes": list(detection.notes),
        "baselineWeeks": detection.baseline_weeks,
    }


def generated_at(document: Mapping[str, Any]) -> datetime:
    """When a stored report was generated (marking a finding does not change it)."""
    return as_utc(datetime.fromisoformat(str(document["generatedAt"]).replace("Z", "+00:00")))


@dataclass(frozen=True)
class FindingId:
    """Which finding of a report: its metric, and its dimension and key for a per-key one."""

    metric: str
    dimension: str | None = None
    key: str | None = None

    def matches(self, finding: Mapping[str, Any]) -> bool:
        return (finding.get("metric"), finding.get("dimension"), finding.get("key")) == (
            self.metric,
            self.dimension,
            self.key,
        )

    def __str__(self) -> str:
        where = "" if self.dimension is None else f" of {self.dimension} '{self.key}'"
        return f"{self.metric}{where}"


def set_mark(
    document: dict[str, Any], finding: FindingId, marked_at: str, note: str, *, expected: bool = True
) -> dict[str, Any]:
    """Puts an operator's mark on one of the report's findings (in place), or takes this report's
    mark off it; returns the finding. LookupError when the report has no such finding."""
    findings = document.get("anomalies") or []
    for i, found in enumerate(findings):
        if isinstance(found, Mapping) and finding.matches(found):
            anomaly = Anomaly.from_dict(found)
            if expected:
                anomaly = mark(anomaly, str(document["id"]), marked_at, note)
            elif anomaly.mark is not None and anomaly.mark.report_id == document["id"]:
                anomaly = replace(anomaly, mark=None)
            findings[i] = anomaly.to_dict()
            return findings[i]
    raise LookupError(f"Report '{document.get('id')}' has no finding on {finding}")


# ---------------------------------------------------------------------------------------------
# Generation time: percentiles from a histogram the database builds (constant memory)
# ---------------------------------------------------------------------------------------------

TIME_BUCKET_MS = 10


def percentile(histogram: Sequence[tuple[int, int]], q: float, bucket_ms: int = TIME_BUCKET_MS) -> float:
    """The q-th percentile (0-100) of durations given as (bucket, count), bucket = ms // bucket_ms.

    Interpolates inside the bucket, so the error is below one bucket width.
    """
    total = sum(count for _, count in histogram)
    if total == 0:
        raise ValueError("no durations")
    rank = q / 100 * total
    seen = 0
    for bucket, count in sorted(histogram):
        if seen + count >= rank:
            inside = (rank - seen) / count if count else 0.0
            return round((bucket + inside) * bucket_ms, 1)
        seen += count
    return float((max(b for b, _ in histogram) + 1) * bucket_ms)


def generation_times(
    histograms: Mapping[str, Sequence[tuple[int, int]]], bucket_ms: int = TIME_BUCKET_MS
) -> dict[str, dict[str, float]]:
    """p50 and p95 of started → completed time per model, in milliseconds."""
    return {
        model: {"p50": percentile(rows, 50, bucket_ms), "p95": percentile(rows, 95, bucket_ms)}
        for model, rows in sorted(histograms.items())
        if rows
    }
