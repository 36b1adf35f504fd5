"""A period's metrics: the counts of its requests by model, style, size and color, from the
GROUP BY rows the storage layer hands over. Pure rules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagegen.domain.generation import Status

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
    """Requests of one model, style, size or color. Canceled and unfinished ones are in `total`.

    `credits` is the cost of its completed requests (credits spent), `refunded` the cost of its
    failed ones: what the spend rules need to tell a change of price from a change of mix.
    """

    total: int = 0
    completed: int = 0
    failed: int = 0
    credits: int = 0
    refunded: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    @property
    def failure_rate(self) -> float | None:
        """Percent of failed among completed + failed, 2 decimals; None when none finished."""
        return _percent(self.failed, self.finished)

    def __add__(self, other: Breakdown) -> Breakdown:
        return Breakdown(
            self.total + other.total,
            self.completed + other.completed,
            self.failed + other.failed,
            self.credits + other.credits,
            self.refunded + other.refunded,
        )

    def __sub__(self, other: Breakdown) -> Breakdown:
        return Breakdown(
            self.total - other.total,
            self.completed - other.completed,
            self.failed - other.failed,
            self.credits - other.credits,
            self.refunded - other.refunded,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "failureRate": self.failure_rate,
            "creditsSpent": self.credits,
            "creditsRefunded": self.refunded,
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

    @property
    def overall(self) -> Breakdown:
        """The whole period as one breakdown (the rest of a key is `overall - key`)."""
        return Breakdown(
            self.total_requests,
            self.completed_requests,
            self.failed_requests,
            self.total_credits_spent,
            self.total_credits_refunded,
        )

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
        key: Breakdown(
            int(v.get("total", 0)),
            int(v.get("completed", 0)),
            int(v.get("failed", 0)),
            int(v.get("creditsSpent", 0)),
            int(v.get("creditsRefunded", 0)),
        )
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
    if row.status == Status.COMPLETED:
        return Breakdown(row.count, completed=row.count, credits=row.cost)
    if row.status == Status.FAILED:
        return Breakdown(row.count, failed=row.count, refunded=row.cost)
    return Breakdown(row.count)


def _count(rows: Sequence[GroupCount], status: Status) -> int:
    return sum(row.count for row in rows if row.status == status)


def _sorted(breakdown: dict[str, Breakdown]) -> dict[str, Breakdown]:
    # Sorted keys: the same requests always give the same document (invariant 6).
    return {key: breakdown[key] for key in sorted(breakdown)}
