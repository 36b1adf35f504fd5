"""A finding, as stored in a report, and an operator's mark on one."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")

# Metrics compared as ratios; the others are rates and shares, compared in points.
AMOUNTS = frozenset({"totalRequests", "totalCreditsSpent", "creditsPerRequest"})


@dataclass(frozen=True)
class Mark:
    """An operator's word that a finding was expected, kept on the report it was made on.

    `gap` is the marked finding's distance from its baseline (see `Anomaly.gap`): the same pattern
    is withheld in the following weeks while it does not grow beyond it.
    """

    report_id: str
    marked_at: str  # ISO 8601, UTC
    note: str
    kind: str
    metric: str
    dimension: str | None
    key: str | None
    direction: int  # +1: the marked finding was a rise, -1 a fall
    gap: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "reportId": self.report_id,
            "markedAt": self.marked_at,
            "note": self.note,
            "kind": self.kind,
            "metric": self.metric,
            "dimension": self.dimension,
            "key": self.key,
            "direction": self.direction,
            "gap": self.gap,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Mark:
        return cls(
            report_id=str(data["reportId"]),
            marked_at=str(data["markedAt"]),
            note=str(data.get("note") or ""),
            kind=str(data["kind"]),
            metric=str(data["metric"]),
            dimension=_optional(data.get("dimension")),
            key=_optional(data.get("key")),
            direction=1 if float(data.get("direction", 1)) >= 0 else -1,
            gap=float(data["gap"]),
        )


@dataclass(frozen=True)
class Anomaly:
    """One finding: what moved (metric, and the dimension and key for a per-key one), by how much
    (observed against expected, the band [lower, upper] of ordinary values it left, the score in
    robust standard deviations), how it was found (method), since when (a drift's or level shift's
    first week) and in words (message). `history` holds the metric's value in each baseline week,
    oldest first, then in the period (null where there was nothing to measure)."""

    kind: str  # spike, drop, level_shift, drift, success_rate_drop, failure_rate_jump, ...
    metric: str  # the JSON name of the metric: totalRequests, successRate, failureRate, share, ...
    dimension: str | None  # model, style, size or color for a per-key finding
    key: str | None  # e.g. "anime"
    observed: float
    expected: float  # the baseline's centre
    score: float  # robust z-score: robust standard deviations away, in the alarming direction
    severity: Severity
    message: str
    lower: float | None = None  # the band of ordinary values; None on a side that never alarms
    upper: float | None = None
    method: str = ""
    since: str | None = None  # the id of the week a sustained change started
    history: tuple[float | None, ...] = ()
    mark: Mark | None = None

    @property
    def identity(self) -> tuple[str, str | None, str | None]:
        return self.metric, self.dimension, self.key

    @property
    def direction(self) -> int:
        return 1 if self.observed >= self.expected else -1

    @property
    def gap(self) -> float:
        """Distance from the baseline: a log ratio for amounts, points for rates and shares."""
        if self.metric in AMOUNTS:
            if self.observed <= 0 or self.expected <= 0:
                return math.inf
            return abs(math.log(self.observed / self.expected))
        return abs(self.observed - self.expected)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "kind": self.kind,
            "metric": self.metric,
            "dimension": self.dimension,
            "key": self.key,
            "observed": self.observed,
            "expected": self.expected,
            "lower": self.lower,
            "upper": self.upper,
            "score": self.score,
            "method": self.method,
            "severity": self.severity,
            "since": self.since,
            "message": self.message,
            "history": list(self.history),
        }
        if self.mark is not None:
            document["mark"] = self.mark.to_dict()
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Anomaly:
        """Read back `to_dict` (older reports lack the newer fields)."""
        severity = str(data.get("severity", "info"))
        mark = data.get("mark")
        return cls(
            kind=str(data["kind"]),
            metric=str(data["metric"]),
            dimension=_optional(data.get("dimension")),
            key=_optional(data.get("key")),
            observed=float(data["observed"]),
            expected=float(data["expected"]),
            score=float(data.get("score", 0.0)),
            severity=severity if severity in SEVERITIES else "info",  # type: ignore[arg-type]
            message=str(data.get("message", "")),
            lower=_optional_number(data.get("lower")),
            upper=_optional_number(data.get("upper")),
            method=str(data.get("method") or ""),
            since=_optional(data.get("since")),
            history=tuple(_optional_number(v) for v in data.get("history") or ()),
            mark=Mark.from_dict(mark) if isinstance(mark, Mapping) else None,
        )


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_number(value: Any) -> float | None:
    return None if value is None else float(value)


def higher(a: Severity, b: Severity) -> Severity:
    return a if SEVERITY_RANK[a] <= SEVERITY_RANK[b] else b


def ordered(findings: Sequence[Anomaly]) -> list[Anomaly]:
    """Most severe first, then by score."""
    return sorted(
        findings,
        key=lambda a: (SEVERITY_RANK[a.severity], -a.score, a.metric, a.dimension or "", a.key or ""),
    )


# -- numbers in messages ------------------------------------------------------------------------


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 0.95 else f"{ratio:.2f}x"


def weeks(n: int) -> str:
    return f"{n} week{'' if n == 1 else 's'}"
