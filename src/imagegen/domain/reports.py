"""Reports: the periods they cover, their metrics, and anomaly detection against past weeks.

Pure rules. The storage layer counts a period's requests with one GROUP BY and hands the rows to
`summarize`; the service layer summarizes each of the preceding weeks (`weeks_before`) the same
way and calls `detect` with them as the baseline; `report_document` is the JSON that is stored
and served.

All instants are UTC and every period is half-open, [start, end). A naive datetime is read as UTC
(SQLite hands timestamps back naive).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from imagegen.domain.generation import Status

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
# Metrics
# ---------------------------------------------------------------------------------------------

DIMENSIONS = ("model", "style", "size", "color")


@dataclass(frozen=True)
class GroupCount:
    """One row of `GROUP BY model, style, color, size, status` over a period's requests."""

    model: str
    style: str
    color: str
    size: str
    status: str
    count: int
    cost: int  # the summed cost, in credits, of these requests


def _percent(part: int, whole: int) -> float | None:
    # None (JSON null) rather than 0 or 100: with nothing finished there is no rate to report.
    return None if whole == 0 else round(100 * part / whole, 2)


@dataclass(frozen=True)
class Breakdown:
    """Requests of one model, style, size or color. Canceled and unfinished ones are in `total`."""

    total: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    @property
    def failure_rate(self) -> float | None:
        """Percent of failed among completed + failed, 2 decimals; None when none finished."""
        return _percent(self.failed, self.finished)

    def __add__(self, other: Breakdown) -> Breakdown:
        return Breakdown(
            self.total + other.total, self.completed + other.completed, self.failed + other.failed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "failureRate": self.failure_rate,
        }


@dataclass(frozen=True)
class Metrics:
    """A period's numbers. `to_dict` gives the case study's JSON names.

    Every request created in the period counts in `total_requests`. Canceled requests (refunded,
    never run) are counted in `canceled_requests` but are neither completed nor failed, so they
    do not move the success rate or `total_credits_refunded`; requests still pending or running
    when the report is made count in the total only.
    """

    total_requests: int = 0
    completed_requests: int = 0
    failed_requests: int = 0
    canceled_requests: int = 0
    total_credits_spent: int = 0  # cost of completed requests
    total_credits_refunded: int = 0  # cost of failed requests
    by_model: dict[str, Breakdown] = field(default_factory=dict)
    by_style: dict[str, Breakdown] = field(default_factory=dict)
    by_size: dict[str, Breakdown] = field(default_factory=dict)
    by_color: dict[str, Breakdown] = field(default_factory=dict)
    unique_users: int = 0

    @property
    def finished_requests(self) -> int:
        return self.completed_requests + self.failed_requests

    @property
    def success_rate(self) -> float | None:
        """Percent of completed among completed + failed, 2 decimals; None when none finished."""
        return _percent(self.completed_requests, self.finished_requests)

    def breakdown(self, dimension: str) -> dict[str, Breakdown]:
        """by_model, by_style, by_size or by_color, by the dimension's name."""
        if dimension not in DIMENSIONS:
            raise ValueError(f"unknown dimension {dimension!r}; expected one of {DIMENSIONS}")
        breakdown: dict[str, Breakdown] = getattr(self, f"by_{dimension}")
        return breakdown

    def to_dict(self) -> dict[str, Any]:
        return {
            "totalRequests": self.total_requests,
            "completedRequests": self.completed_requests,
            "failedRequests": self.failed_requests,
            "canceledRequests": self.canceled_requests,
            "totalCreditsSpent": self.total_credits_spent,
            "totalCreditsRefunded": self.total_credits_refunded,
            "successRate": self.success_rate,
            **{_BY_NAMES[dim]: _breakdown_dict(self.breakdown(dim)) for dim in DIMENSIONS},
            "uniqueUsers": self.unique_users,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metrics:
        """Read back `to_dict` (or a case-study report, which lacks some of the newer fields)."""
        by = {dim: _breakdown_from(data.get(_BY_NAMES[dim]) or {}) for dim in DIMENSIONS}
        return cls(
            total_requests=int(data.get("totalRequests", 0)),
            completed_requests=int(data.get("completedRequests", 0)),
            failed_requests=int(data.get("failedRequests", 0)),
            canceled_requests=int(data.get("canceledRequests", 0)),
            total_credits_spent=int(data.get("totalCreditsSpent", 0)),
            total_credits_refunded=int(data.get("totalCreditsRefunded", 0)),
            by_model=by["model"],
            by_style=by["style"],
            by_size=by["size"],
            by_color=by["color"],
            unique_users=int(data.get("uniqueUsers", 0)),
        )


_BY_NAMES = {"model": "byModel", "style": "byStyle", "size": "bySize", "color": "byColor"}


def _breakdown_dict(breakdown: Mapping[str, Breakdown]) -> dict[str, Any]:
    return {key: breakdown[key].to_dict() for key in sorted(breakdown)}


def _breakdown_from(data: Mapping[str, Any]) -> dict[str, Breakdown]:
    return {
        key: Breakdown(int(v.get("total", 0)), int(v.get("completed", 0)), int(v.get("failed", 0)))
        for key, v in data.items()
    }


def summarize(groups: Iterable[GroupCount], unique_users: int) -> Metrics:
    """A period's Metrics from its GROUP BY rows and its count of distinct users."""
    if unique_users < 0:
        raise ValueError(f"unique_users must be 0 or more, not {unique_users}")
    rows = list(groups)
    for row in rows:
        if row.count < 0 or row.cost < 0:
            raise ValueError(f"a group cannot have a negative count or cost: {row}")
    by: dict[str, dict[str, Breakdown]] = {dim: {} for dim in DIMENSIONS}
    for row in rows:
        tally = _tally(row)
        for dim in DIMENSIONS:
            key = getattr(row, dim)
            by[dim][key] = by[dim].get(key, Breakdown()) + tally
    return Metrics(
        total_requests=sum(row.count for row in rows),
        completed_requests=_count(rows, Status.COMPLETED),
        failed_requests=_count(rows, Status.FAILED),
        canceled_requests=_count(rows, Status.CANCELED),
        total_credits_spent=sum(row.cost for row in rows if row.status == Status.COMPLETED),
        total_credits_refunded=sum(row.cost for row in rows if row.status == Status.FAILED),
        by_model=_sorted(by["model"]),
        by_style=_sorted(by["style"]),
        by_size=_sorted(by["size"]),
        by_color=_sorted(by["color"]),
        unique_users=unique_users,
    )


def _tally(row: GroupCount) -> Breakdown:
    completed = row.count if row.status == Status.COMPLETED else 0
    failed = row.count if row.status == Status.FAILED else 0
    return Breakdown(row.count, completed, failed)


def _count(rows: Sequence[GroupCount], status: Status) -> int:
    return sum(row.count for row in rows if row.status == status)


def _sorted(breakdown: dict[str, Breakdown]) -> dict[str, Breakdown]:
    # Sorted keys: the same requests always give the same document (invariant 6).
    return {key: breakdown[key] for key in sorted(breakdown)}


# ---------------------------------------------------------------------------------------------
# Anomaly detection
# ---------------------------------------------------------------------------------------------

Severity = Literal["info", "warning", "critical"]
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}

# MAD times this estimates the standard deviation of normally distributed data.
MAD_SCALE = 1.4826


@dataclass(frozen=True)
class Thresholds:
    """When a difference from the baseline is an anomaly. Rates are in percent, gaps in points.

    A finding fires when the case study's rule fires (severity warning, or critical when the
    robust z-score is at least `critical_z`), or, below the case study's thresholds, when the
    robust z-score alone is at least `robust_z` (severity info: unusual for this history).
    """

    min_requests: int = 50
    """Requests in the period (for a drop: the baseline median) before volume, credit and
    success-rate rules apply, so that 1 -> 4 requests is not an alarm."""
    min_baseline_weeks: int = 3
    """Weeks of history needed before any rule applies; with fewer, `detect` only adds a note."""
    spike_ratio: float = 3.0
    """The case study's rule: requests or credits above this many times the baseline median are
    a spike."""
    drop_ratio: float = 0.5
    """Requests below this fraction of the baseline median are a drop (the case study had no drop
    rule; a normal seasonal swing stayed above 0.5x in the evaluation, bench/anomalies.py)."""
    success_rate_drop: float = 10.0
    """Points below the baseline median success rate that are an anomaly."""
    failure_rate_jump: float = 15.0
    """Points above the baseline median failure rate of one model, style, size or color."""
    min_key_requests: int = 30
    """Finished (completed + failed) requests of a model, style, size or color in the period
    before its failure rate is judged."""
    robust_z: float = 4.5
    """Robust z-score, (observed - median) / (1.4826 * MAD), from which a change is unusual."""
    critical_z: float = 7.0
    """Robust z-score from which a case-study rule's finding is critical rather than a warning."""
    volume_floor: float = 0.25
    """The spread assumed for counts is at least this fraction of the median (and at least its
    square root), so a perfectly flat history does not make every small change an anomaly."""
    rate_floor: float = 1.0
    """The spread assumed for a rate is at least this many points (and at least the binomial
    spread of a rate measured on the period's number of requests)."""

    def __post_init__(self) -> None:
        if self.spike_ratio <= 1:
            raise ValueError("spike_ratio must be above 1")
        if not 0 < self.drop_ratio < 1:
            raise ValueError("drop_ratio must be between 0 and 1")
        if min(self.robust_z, self.critical_z, self.volume_floor, self.rate_floor) <= 0:
            raise ValueError("robust_z, critical_z, volume_floor and rate_floor must be positive")
        if min(self.min_requests, self.min_baseline_weeks, self.min_key_requests) < 1:
            raise ValueError("min_requests, min_baseline_weeks and min_key_requests must be >= 1")


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Anomaly:
    kind: str  # spike, drop, success_rate_drop, failure_rate_jump
    metric: str  # the JSON name of the metric: totalRequests, successRate, failureRate, ...
    dimension: str | None  # model, style, size or color for a per-key finding
    key: str | None  # e.g. "anime"
    observed: float
    expected: float  # the baseline median
    score: float  # robust z-score: robust standard deviations away, in the alarming direction
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "dimension": self.dimension,
            "key": self.key,
            "observed": self.observed,
            "expected": self.expected,
            "score": self.score,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass(frozen=True)
class Detection:
    anomalies: list[Anomaly] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline_weeks: int = 0  # weeks of history the baseline was built from


@dataclass(frozen=True)
class _Baseline:
    median: float
    scale: float  # robust standard deviation, floored
    weeks: int


def detect(
    current: Metrics, baseline: Sequence[Metrics], thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> Detection:
    """Compare a period's metrics with the preceding weeks' (oldest first).

    Leading weeks without a single request are taken to be before the service's history began
    and are ignored; an empty week after the first active one is history (an outage) and counts.
    A model, style, size or color that holds all of the period's finished requests is not judged
    on its own (its failure rate is the success-rate finding again). Findings are ordered by
    severity, then score.
    """
    t = thresholds
    history = _without_leading_empty_weeks(baseline)
    if len(history) < t.min_baseline_weeks:
        return Detection([], [_too_little_history(len(history), t)], len(history))
    notes = []
    if current.total_requests < t.min_requests:
        notes.append(
            f"only {current.total_requests} requests in the period: the spike, credit and "
            f"success-rate rules need {t.min_requests}"
        )
    anomalies = [
        *_request_anomalies(current, history, t),
        *_credit_anomalies(current, history, t),
        *_success_rate_anomalies(current, history, t),
        *_failure_rate_anomalies(current, history, t),
    ]
    anomalies.sort(key=lambda a: (_SEVERITY_RANK[a.severity], -a.score))
    return Detection(anomalies, notes, len(history))


def _without_leading_empty_weeks(baseline: Sequence[Metrics]) -> list[Metrics]:
    first = next((i for i, week in enumerate(baseline) if week.total_requests > 0), len(baseline))
    return list(baseline[first:])


def _too_little_history(weeks: int, t: Thresholds) -> str:
    have = "no week" if weeks == 0 else f"only {weeks} week{'s' if weeks > 1 else ''}"
    return f"{have} of history; anomaly detection needs {t.min_baseline_weeks}"


def _severity(rule_hit: bool, z: float, t: Thresholds, *, twice: bool = False) -> Severity | None:
    """Warning when the rule fires; critical when the change is also far outside the history
    (z >= critical_z) or twice the rule's own margin (`twice`); info for a merely unusual week."""
    if rule_hit:
        return "critical" if z >= t.critical_z or twice else "warning"
    return "info" if z >= t.robust_z else None


def _robust_spread(values: Sequence[float], median: float) -> float:
    return MAD_SCALE * statistics.median(abs(v - median) for v in values)


def _count_baseline(values: Sequence[float], t: Thresholds) -> _Baseline:
    median = statistics.median(values)
    floor = max(t.volume_floor * median, math.sqrt(median), 1.0)
    return _Baseline(median, max(_robust_spread(values, median), floor), len(values))


def _rate_baseline(values: Sequence[float], observed: float, n: int, t: Thresholds) -> _Baseline:
    median = statistics.median(values)
    floor = max(_binomial_points(median, observed, n), t.rate_floor)
    return _Baseline(median, max(_robust_spread(values, median), floor), len(values))


def _binomial_points(a: float, b: float, n: int) -> float:
    """The standard deviation, in points, of a rate measured on n requests, for the true rate
    between a and b (percent) that spreads most: a rate near 0 must not make any failure news."""
    low, high = sorted((a / 100, b / 100))
    p = min(max(0.5, low), high)
    return 100 * math.sqrt(p * (1 - p) / n)


def _anomaly(
    kind: str,
    metric: str,
    observed: float,
    base: _Baseline,
    z: float,
    severity: Severity,
    message: str,
    *,
    dimension: str | None = None,
    key: str | None = None,
) -> Anomaly:
    return Anomaly(
        kind=kind,
        metric=metric,
        dimension=dimension,
        key=key,
        observed=round(float(observed), 2),
        expected=round(float(base.median), 2),
        score=round(max(z, 0.0), 2),
        severity=severity,
        message=message,
    )


def _request_anomalies(current: Metrics, history: list[Metrics], t: Thresholds) -> list[Anomaly]:
    base = _count_baseline([w.total_requests for w in history], t)
    observed = current.total_requests
    found = []
    if observed >= t.min_requests:
        z = (observed - base.median) / base.scale
        rule = observed > t.spike_ratio * base.median
        severity = _severity(rule, z, t, twice=observed > 2 * t.spike_ratio * base.median)
        if severity:
            message = _times_message("Requests", observed, base)
            found.append(_anomaly("spike", "totalRequests", observed, base, z, severity, message))
    if base.median >= t.min_requests:
        z = (base.median - observed) / base.scale
        rule = observed < t.drop_ratio * base.median
        severity = _severity(rule, z, t, twice=observed < t.drop_ratio / 2 * base.median)
        if severity:
            message = _times_message("Requests dropped to", observed, base)
            found.append(_anomaly("drop", "totalRequests", observed, base, z, severity, message))
    return found


def _credit_anomalies(current: Metrics, history: list[Metrics], t: Thresholds) -> list[Anomaly]:
    if current.total_requests < t.min_requests:
        return []
    base = _count_baseline([w.total_credits_spent for w in history], t)
    observed = current.total_credits_spent
    z = (observed - base.median) / base.scale
    rule = observed > t.spike_ratio * base.median
    severity = _severity(rule, z, t, twice=observed > 2 * t.spike_ratio * base.median)
    if severity is None:
        return []
    message = _times_message("Credits spent", observed, base)
    return [_anomaly("spike", "totalCreditsSpent", observed, base, z, severity, message)]


def _success_rate_anomalies(current: Metrics, history: list[Metrics], t: Thresholds) -> list[Anomaly]:
    observed = current.success_rate
    rates = [w.success_rate for w in history if w.success_rate is not None]
    if observed is None or current.finished_requests < t.min_requests:
        return []
    if len(rates) < t.min_baseline_weeks:
        return []
    base = _rate_baseline(rates, observed, current.finished_requests, t)
    z = (base.median - observed) / base.scale
    gap = base.median - observed
    severity = _severity(gap >= t.success_rate_drop, z, t, twice=gap >= 2 * t.success_rate_drop)
    if severity is None:
        return []
    message = _rate_message("Success rate", observed, base)
    return [_anomaly("success_rate_drop", "successRate", observed, base, z, severity, message)]


def _failure_rate_anomalies(current: Metrics, history: list[Metrics], t: Thresholds) -> list[Anomaly]:
    found = []
    for dim in DIMENSIONS:
        for key, now in current.breakdown(dim).items():
            if now.finished == current.finished_requests:
                continue  # the key is the whole period: the success-rate rule already judged it
            if not _stands_out(now, current, t):
                continue
            anomaly = _failure_rate_anomaly(dim, key, now, history, t)
            if anomaly is not None:
                found.append(anomaly)
    return found


def _stands_out(key: Breakdown, current: Metrics, t: Thresholds) -> bool:
    """Whether a key fails clearly more than the rest of its period.

    One failing style also lifts the rate of every model, size and color its requests pass
    through, and a failure surge lifts every key; neither is news about those keys (the cause gets
    its own finding), so a key is judged only when it fails at least half the jump margin more
    than the requests outside it.
    """
    rest = Breakdown(
        total=current.total_requests - key.total,
        completed=current.completed_requests - key.completed,
        failed=current.failed_requests - key.failed,
    )
    if key.failure_rate is None or rest.failure_rate is None:
        return True
    return key.failure_rate - rest.failure_rate >= t.failure_rate_jump / 2


def _failure_rate_anomaly(
    dim: str, key: str, now: Breakdown, history: list[Metrics], t: Thresholds
) -> Anomaly | None:
    observed = now.failure_rate
    if observed is None or now.finished < t.min_key_requests:
        return None
    rates, overall_note = _key_failure_rates(history, dim, key), ""
    if len(rates) < t.min_baseline_weeks:
        # Too little history of its own (new in the catalog): compare with the overall failure
        # rate, so that a new model failing half the time is still news.
        rates = [100 - w.success_rate for w in history if w.success_rate is not None]
        overall_note = f" of all requests: this {dim} is new"
    if len(rates) < t.min_baseline_weeks:
        return None
    base = _rate_baseline(rates, observed, now.finished, t)
    z = (observed - base.median) / base.scale
    gap = observed - base.median
    severity = _severity(gap >= t.failure_rate_jump, z, t, twice=gap >= 2 * t.failure_rate_jump)
    if severity is None:
        return None
    message = _rate_message(f"Failure rate of {dim} '{key}'", observed, base, overall_note)
    return _anomaly(
        "failure_rate_jump",
        "failureRate",
        observed,
        base,
        z,
        severity,
        message,
        dimension=dim,
        key=key,
    )


def _key_failure_rates(history: list[Metrics], dimension: str, key: str) -> list[float]:
    rates = (week.breakdown(dimension).get(key) for week in history)
    return [b.failure_rate for b in rates if b is not None and b.failure_rate is not None]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _times_message(label: str, observed: float, base: _Baseline) -> str:
    counts = f"({_number(observed)} vs {_number(base.median)})"
    if base.median == 0:
        return f"{label} {_number(observed)} against a {base.weeks}-week median of 0"
    ratio = observed / base.median
    shown = f"{ratio:.1f}" if ratio >= 0.95 else f"{ratio:.2f}"
    return f"{label} {shown}x the {base.weeks}-week median {counts}"


def _rate_message(label: str, observed: float, base: _Baseline, overall_note: str = "") -> str:
    gap = observed - base.median
    return (
        f"{label} {observed:.1f}% vs {base.median:.1f}% ({gap:+.1f} points), "
        f"the {base.weeks}-week median{overall_note}"
    )


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
        "notes": list(detection.notes),
        "baselineWeeks": detection.baseline_weeks,
    }


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
