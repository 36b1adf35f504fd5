"""A metric week by week, and the two ways the detector judges it: one week against the recent
weeks, and a sustained change (a drift or a level shift) against older reference weeks.

A slow drift hides in a baseline built from the weeks it has already reached: after four weeks
of +2 points the recent median has climbed with it and no single week stands out. So a sustained
change is measured against the weeks before the monitored window (the reference), which the drift
has not reached, with a one-sided CUSUM to find where the excursion began.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from imagegen.domain.anomalies.stats import median, robust_spread
from imagegen.domain.anomalies.thresholds import Thresholds

CUSUM_SLACK = 0.5  # standard deviations a week may stray before the CUSUM accumulates it
EARLIER_Z = 2.0  # how clearly the excursion's weeks before this one must already stand out
STILL = 0.75  # the period itself must still be this share of the practical minimum away


@dataclass(frozen=True)
class Point:
    """A metric's value in one week and the number of requests it was measured on."""

    value: float  # percent for rates and shares; a log for amounts
    n: float


# (centre, value, n) -> the sampling standard deviation of `value` measured on n requests
Noise = Callable[[float, float, float], float]


@dataclass(frozen=True)
class Series:
    points: tuple[Point | None, ...]  # the history weeks, oldest first, then the period
    noise: Noise
    floor: float  # the least spread assumed
    weighted: bool  # a pooled value weighs the weeks by their requests (rates) or not (amounts)

    @property
    def current(self) -> Point | None:
        return self.points[-1]

    @property
    def history(self) -> tuple[Point | None, ...]:
        return self.points[:-1]

    def pooled(self, points: Sequence[Point]) -> Point:
        n = sum(p.n for p in points)
        if self.weighted and n > 0:
            return Point(sum(p.value * p.n for p in points) / n, n)
        return Point(sum(p.value for p in points) / len(points), n)


@dataclass(frozen=True)
class Week:
    """The period against the median of the recent weeks."""

    centre: float
    spread: float
    gap: float  # observed - centre
    weeks: int

    @property
    def z(self) -> float:
        return abs(self.gap) / self.spread

    @property
    def direction(self) -> int:
        return 1 if self.gap >= 0 else -1


def one_week(series: Series, recent: int, settle: float) -> Week | None:
    """The period's value against the median of the last `recent` weeks with data, or of their
    newer half when the halves differ by `settle` or more: after a change (a level shift that
    ended, a price that moved) the weeks since are the baseline."""
    now = series.current
    baseline = settled([p.value for p in series.history[-recent:] if p is not None], settle)
    if now is None or not baseline:
        return None
    centre = median(baseline)
    spread = max(robust_spread(baseline, centre), series.noise(centre, now.value, now.n), series.floor)
    return Week(centre, spread, now.value - centre, len(baseline))


def settled(values: list[float], settle: float) -> list[float]:
    """`values`, or their newer half if the two halves' medians differ by `settle` or more."""
    if len(values) >= 6 and not steady(values, settle):
        return values[-(len(values) // 2) :]
    return values


@dataclass(frozen=True)
class Run:
    """A sustained change: the weeks since `start` (an index into the series' points) stand out
    from the reference weeks before the monitored window."""

    start: int
    weeks: int  # of the run, the period included
    centre: float  # the reference median
    reference_weeks: int
    level: float  # the last two weeks pooled
    spread: float  # of the level
    gap: float  # level - centre
    shape: Literal["drift", "level_shift"]

    @property
    def z(self) -> float:
        return abs(self.gap) / self.spread

    @property
    def direction(self) -> int:
        return 1 if self.gap >= 0 else -1


def sustained(series: Series, t: Thresholds, minimum: float, direction: int = 0) -> Run | None:
    """A drift or level shift that has lasted at least two weeks, is still there in the period
    and is both unusual (`sustained_z`) and big enough (`minimum`); `direction` 0 judges both
    ways, +1 only rises, -1 only falls."""
    points, monitor = series.points, t.monitor_weeks
    if len(points) < monitor + t.min_reference_weeks:
        return None
    reference = [p.value for p in points[:-monitor] if p is not None]
    now = points[-1]
    if len(reference) < t.min_reference_weeks or now is None:
        return None
    if not steady(reference, minimum / 2):
        return None
    centre = median(reference)
    spread = robust_spread(reference, centre)
    way = direction or (1 if now.value >= centre else -1)
    if direction and (now.value - centre) * direction <= 0:
        return None
    start = _excursion_start(series, points[-monitor:], centre, spread, way)
    if start is None or start == monitor - 1:
        return None  # nothing, or the period alone: a one-week change
    run = [p for p in points[-monitor + start :] if p is not None]
    if (
        start == 0
        and _on_side(series, points[-monitor - 1], centre, spread, way)
        and not _growing(series, run, centre, way, minimum)
    ):
        return (
            None  # it began before the monitored weeks and stopped growing: old news, or an old change ending
        )

    def standing(part: Sequence[Point]) -> tuple[float, float, float]:
        level = series.pooled(part)
        root = math.sqrt(len(part))
        sd = max(spread / root, series.noise(centre, level.value, level.n), series.floor / root)
        return level.value, way * (level.value - centre), way * (level.value - centre) / sd

    level, gap, z = standing(run[-2:])
    _, earlier_gap, earlier_z = standing(run[:-1])
    extreme = max(range(len(run)), key=lambda i: way * (run[i].value - centre))
    _, rest_gap, rest_z = standing(run[:extreme] + run[extreme + 1 :])
    still = way * (now.value - centre)
    if gap < minimum or z < t.sustained_z or still < STILL * minimum:
        return None
    if earlier_gap < minimum / 2 or earlier_z < EARLIER_Z:
        return None  # the weeks before the period did not stand out: a one-week change
    if rest_gap < minimum / 2 or rest_z < EARLIER_Z:
        return None  # the run rests on one week (a spike, then ordinary weeks)
    sd = abs(level - centre) / z
    return Run(
        start=len(points) - monitor + start,
        weeks=len(run),
        centre=centre,
        reference_weeks=len(reference),
        level=level,
        spread=sd,
        gap=level - centre,
        shape=_shape([way * (p.value - centre) for p in run]),
    )


def steady(reference: Sequence[float], tolerance: float) -> bool:
    """Whether the reference weeks hold no change of their own: the medians of their older and
    newer halves differ by less than `tolerance`. A reference that holds an earlier event (a price
    change of four weeks) would make the return to normal look like a new shift."""
    half = len(reference) // 2
    if half == 0:
        return True
    return abs(median(reference[-half:]) - median(reference[:half])) < tolerance


def _growing(series: Series, run: Sequence[Point], centre: float, way: int, minimum: float) -> bool:
    """Whether the run's last two weeks stand out from the centre by `minimum`/2 more than its
    earlier weeks do: a drift still climbing."""
    if len(run) < 3:
        return False
    recent, earlier = series.pooled(run[-2:]), series.pooled(run[:-2])
    return way * (recent.value - earlier.value) >= minimum / 2


def _on_side(series: Series, point: Point | None, centre: float, spread: float, way: int) -> bool:
    """Whether a week already leans the run's way (the CUSUM would have counted it)."""
    if point is None:
        return False
    sd = max(spread, series.noise(centre, point.value, point.n), series.floor)
    return way * (point.value - centre) / sd > CUSUM_SLACK


def _excursion_start(
    series: Series, window: Sequence[Point | None], centre: float, spread: float, way: int
) -> int | None:
    """Where the current excursion began: the week after the one-sided CUSUM last stood at 0."""
    total, start = 0.0, None
    for i, point in enumerate(window):
        if point is None:
            total, start = 0.0, None
            continue
        sd = max(spread, series.noise(centre, point.value, point.n), series.floor)
        grown = max(0.0, total + way * (point.value - centre) / sd - CUSUM_SLACK)
        if grown > 0 and total == 0:
            start = i
        if grown == 0:
            start = None
        total = grown
    return start


def _shape(gaps: Sequence[float]) -> Literal["drift", "level_shift"]:
    """A drift climbs: its first half stands out much less than its second; a level shift steps."""
    half = len(gaps) // 2
    first, second = gaps[:half] or gaps[:1], gaps[half:]
    mean_first, mean_second = sum(first) / len(first), sum(second) / len(second)
    return "drift" if mean_first < 0.6 * mean_second else "level_shift"
