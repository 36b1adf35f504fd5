"""The weeks a detection looks at, and what the rules share: series of a metric, bands, grades."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from imagegen.domain.anomalies.findings import Severity, weeks
from imagegen.domain.anomalies.series import Point, Run, Series, Week
from imagegen.domain.anomalies.stats import binomial_points
from imagegen.domain.anomalies.thresholds import Thresholds
from imagegen.domain.metrics import Breakdown, Metrics


@dataclass(frozen=True)
class Weeks:
    """The period and the weeks before it (oldest first), with their ids when known."""

    history: tuple[Metrics, ...]
    current: Metrics
    ids: tuple[str | None, ...]  # one per history week, then the period's
    t: Thresholds

    @property
    def all(self) -> tuple[Metrics, ...]:
        return (*self.history, self.current)

    def established(self, dimension: str) -> list[str]:
        """Keys with requests in every history week. Newer ones (a style added to the catalog last
        month) would make every other key's share, and the spend, move as they ramp up."""
        keys: set[str] | None = None
        for week in self.history:
            present = {k for k, b in week.breakdown(dimension).items() if b.total > 0}
            keys = present if keys is None else keys & present
        return sorted(keys or ())

    def week_id(self, index: int) -> str | None:
        return self.ids[index] if 0 <= index < len(self.ids) else None

    def since_text(self, run: Run) -> str:
        week_id = self.week_id(run.start)
        building = f"for {weeks(run.weeks)}"
        return f"{building} (since {week_id})" if week_id else building

    def recent_text(self, week: Week) -> str:
        return f"the {week.weeks}-week median"

    def reference_text(self, run: Run) -> str:
        return f"the median of the {weeks(run.reference_weeks)} before"

    def failure_series(self, of: Callable[[Metrics], Breakdown | None]) -> Series:
        """The failure rate (percent of finished) of part of each week's requests."""
        points = tuple(_failure_point(of(week)) for week in self.all)
        return Series(points, binomial_points, self.t.rate_floor, weighted=True)


def _failure_point(part: Breakdown | None) -> Point | None:
    if part is None or part.finished <= 0:
        return None
    return Point(100 * part.failed / part.finished, part.finished)


def shown(series: Series, log: bool = False) -> tuple[float | None, ...]:
    """The series' values as the report shows them (amounts back from their logs), 2 decimals."""
    return tuple(
        None if p is None else round(math.exp(p.value) if log else p.value, 2) for p in series.points
    )


def grade(gap: float, z: float, t: Thresholds, warning: float, critical: float) -> Severity:
    """Info below the warning gap; warning from it; critical from `critical`, or far outside the
    history (z >= critical_z)."""
    if gap < warning:
        return "info"
    return "critical" if z >= t.critical_z or gap >= critical else "warning"


def band(
    centre: float, margin_low: float | None, margin_high: float | None, log: bool = False
) -> tuple[float | None, float | None]:
    """[lower, upper] from the centre and the margins where an alarm starts (None: never alarms)."""

    def edge(value: float) -> float:
        return round(math.exp(value) if log else value, 2)

    lower = None if margin_low is None else edge(centre - margin_low)
    upper = None if margin_high is None else edge(centre + margin_high)
    return lower, upper


def margin(spread: float, z: float, minimum: float, rule: float | None = None) -> float:
    """How far from the centre a finding starts: unusual and big enough, or the rule's own gap."""
    needed = max(z * spread, minimum)
    return needed if rule is None else min(needed, rule)
