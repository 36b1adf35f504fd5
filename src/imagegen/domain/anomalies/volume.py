"""Requests and credits spent: spikes, drops and level shifts against their recent level.

Volumes follow the seasons (a quarter of growth, a holiday dip), so a week is compared with its
level, the median of the last few weeks, and the spread is how far a week usually strays from the
level before it (the median absolute log ratio). A level shift is a run of weeks that all stand
apart from the weeks right before it and from the longer history too: the return to normal after a
temporary rise is not a new shift, since the longer history never rose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from imagegen.domain.anomalies.findings import Anomaly, Severity, higher, number, times, weeks
from imagegen.domain.anomalies.series import steady
from imagegen.domain.anomalies.stats import MAD_SCALE, median, poisson_log, robust_spread
from imagegen.domain.anomalies.thresholds import Thresholds
from imagegen.domain.anomalies.weeks import Weeks


@dataclass(frozen=True)
class Level:
    """An amount in the period against its level."""

    level: float
    spread: float  # of log(amount / level)
    observed: float
    weeks: int
    median: float  # of the recent weeks (the case study's rule looks at it too)
    median_weeks: int

    @property
    def ratio(self) -> float:
        return max(self.observed, 0.5) / self.level

    @property
    def gap(self) -> float:
        return math.log(self.ratio)

    @property
    def z(self) -> float:
        return abs(self.gap) / self.spread


def level_of(amounts: Sequence[float], observed: float, t: Thresholds) -> Level | None:
    """`observed` against the level of the amounts before it."""
    level = _level(amounts, t)
    if level is None:
        return None
    recent = amounts[-t.recent_weeks :]
    return Level(
        level,
        _spread(amounts, level, t),
        observed,
        min(len(amounts), t.level_weeks),
        median(recent),
        len(recent),
    )


def _level(amounts: Sequence[float], t: Thresholds) -> float | None:
    """The median of the last `level_weeks` amounts, leaving out a week that was itself a spike or
    a drop: min_volume_ratio off the recent weeks' median, and sqrt(min_volume_ratio) off each
    other week of the level. The week after a spike (even next to a busy week) is not a drop; the
    weeks after a longer rise, back to normal, keep each other company and stay the level."""
    recent = list(amounts[-t.level_weeks :])
    if not recent:
        return None
    wide, near = median(amounts[-t.recent_weeks :]), math.sqrt(t.min_volume_ratio)

    def apart(a: float, b: float, factor: float) -> bool:
        return not b / factor < a < b * factor

    kept = [
        a
        for i, a in enumerate(recent)
        if not (
            len(recent) > 1
            and apart(a, wide, t.min_volume_ratio)
            and all(apart(a, b, near) for b in recent[:i] + recent[i + 1 :])
        )
    ]
    level = median(kept or recent)
    return level if level > 0 else None


def _spread(amounts: Sequence[float], level: float, t: Thresholds) -> float:
    """How far a week usually strays from the level before it (1.4826 x the median absolute log
    ratio, over the recent weeks), floored by `volume_floor` and the Poisson noise of the level."""
    strays = []
    for i in range(t.level_weeks, len(amounts)):
        before = _level(amounts[:i], t)
        if before is not None:
            strays.append(math.log(max(amounts[i], 0.5) / before))
    strays = strays[-t.recent_weeks :]
    if len(strays) >= t.min_baseline_weeks:
        spread = MAD_SCALE * median([abs(s) for s in strays])
    else:
        logs = [math.log(max(a, 0.5)) for a in amounts[-t.recent_weeks :]]
        spread = robust_spread(logs, median(logs))
    return max(spread, t.volume_floor, poisson_log(level))


# The weeks before a level shift must be steady: their halves' medians within this log ratio (x1.5:
# more than a season moves in a few weeks, less than any shift reported).
_STEADY = math.log(1.5)


@dataclass(frozen=True)
class Shift:
    """A run of weeks, the period included, that all stand apart from the weeks before them."""

    start: int  # index into the weeks (history, then the period)
    weeks: int
    ratio: float  # the run's median against the level before it
    level: float  # the median of the weeks right before the run
    z: float
    observed: float  # the run's median


def level_shift(amounts: Sequence[float], spread: float, t: Thresholds, direction: int) -> Shift | None:
    """The longest run (2 to monitor_weeks weeks, ending with the period) whose every week is at
    least sqrt(min_volume_ratio) times the level before it (at most its inverse for a fall), whose
    median, with or without its most extreme week, is at least min_volume_ratio times both that
    level and the median of all the earlier history (at most drop_ratio for a fall), and unusual
    for that many weeks (sustained_z, the spread of a week over the square root of the run's
    length). A strong season doubles its volume from trough to peak in a few weeks too: a level
    shift smaller than that cannot be told from it without a year of history."""
    for length in range(min(t.monitor_weeks, len(amounts) - t.min_reference_weeks), 1, -1):
        run, before = amounts[-length:], amounts[:-length]
        near, far = median(before[-(t.level_weeks + 1) :]), median(before)
        if near <= 0 or far <= 0 or not steady([math.log(max(a, 0.5)) for a in before], _STEADY):
            continue
        middle = median(run)
        if _leans(before[-1], near, direction, t):
            continue  # the run began earlier (beyond the monitored weeks: old news, or its end)
        # Without its most extreme week the run must still have shifted: a spike and an ordinary
        # week after it are not a level shift.
        ordinary = median(sorted(run, key=lambda a: direction * a)[:-1])
        if direction > 0:
            each = all(a >= math.sqrt(t.min_volume_ratio) * near for a in run)
            enough = min(middle, ordinary) / max(near, far) >= t.min_volume_ratio
        else:
            each = all(a <= near / math.sqrt(t.min_volume_ratio) for a in run)
            enough = max(middle, ordinary) / min(near, far) <= t.drop_ratio
        z = abs(math.log(max(middle, 0.5) / near)) / (spread / math.sqrt(length))
        if each and enough and z >= t.sustained_z:
            return Shift(len(amounts) - length, length, middle / near, near, z, middle)
    return None


def _leans(amount: float, near: float, direction: int, t: Thresholds) -> bool:
    edge = math.sqrt(t.min_volume_ratio)
    return amount >= edge * near if direction > 0 else amount <= near / edge


def requests_findings(w: Weeks) -> list[Anomaly]:
    """A spike, a drop or a level shift in the number of requests."""
    t = w.t
    counts = [float(week.total_requests) for week in w.history]
    observed = float(w.current.total_requests)
    level = level_of(counts, observed, t)
    if level is None:
        return []
    history = tuple(float(c) for c in (*counts, observed))
    found = []
    week = _week_finding(w, level, "totalRequests", "Requests", history)
    if week is not None:
        found.append(week)
    for direction in (1, -1):
        if (direction > 0 and observed < t.min_requests) or (direction < 0 and level.level < t.min_requests):
            continue
        shift = level_shift([*counts, observed], level.spread, t, direction)
        if shift is not None:
            found.append(_shift_finding(w, shift, "totalRequests", "Requests", history, direction))
    return _one_per_direction(found)


def credits_finding(w: Weeks) -> Anomaly | None:
    """Credits spent judged on their own, as requests are (a spike only: a fall in spend follows
    the requests or the success rate, which have their own rules)."""
    t = w.t
    if w.current.total_requests < t.min_requests:
        return None
    amounts = [float(week.total_credits_spent) for week in w.history]
    observed = float(w.current.total_credits_spent)
    level = level_of(amounts, observed, t)
    if level is None or level.gap <= 0:
        return None
    history = tuple(float(a) for a in (*amounts, observed))
    return _week_finding(w, level, "totalCreditsSpent", "Credits spent", history)


def _week_finding(
    w: Weeks,
    level: Level,
    metric: str,
    label: str,
    history: tuple[float, ...],
    forced: Severity | None = None,
) -> Anomaly | None:
    """The period's spike or drop, when a rule fires (or `forced`, with that severity)."""
    t = w.t
    rise = level.gap > 0
    if rise and level.observed < t.min_requests and metric == "totalRequests":
        return None
    if not rise and level.level < t.min_requests:
        return None
    # The case study's 3x, against the level or the 8-week median, whichever is lower: at a
    # season's peak the level is high, and no season moves a week 3x its median.
    median_ratio = level.observed / level.median if level.median > 0 else 0.0
    rule = max(level.ratio, median_ratio) > t.spike_ratio if rise else level.ratio < t.drop_ratio
    unusual = level.z >= t.robust_z and (
        level.ratio >= t.min_volume_ratio if rise else level.ratio <= 1 / t.min_volume_ratio
    )
    if not (rule or unusual or forced):
        return None
    twice = level.ratio > 2 * t.spike_ratio if rise else level.ratio < t.drop_ratio / 2
    severity: Severity = "info"
    if rule:
        severity = "critical" if twice or level.z >= t.critical_z else "warning"
    if forced is not None:
        severity = higher(severity, forced)
    up = min(math.log(t.spike_ratio), max(t.robust_z * level.spread, math.log(t.min_volume_ratio)))
    down = min(-math.log(t.drop_ratio), max(t.robust_z * level.spread, math.log(t.min_volume_ratio)))
    verb = label if rise else f"{label} dropped to"
    message = (
        f"{verb} {times(level.ratio)} their level ({number(level.observed)} vs {number(level.level)}, "
        f"the median of the last {weeks(level.weeks)})"
    )
    if rise and level.ratio <= t.spike_ratio < median_ratio:
        message += f"; {times(median_ratio)} the {level.median_weeks}-week median"
    return Anomaly(
        kind="spike" if rise else "drop",
        metric=metric,
        dimension=None,
        key=None,
        observed=round(level.observed, 2),
        expected=round(level.level, 2),
        score=round(level.z, 2),
        severity=severity,
        message=message,
        lower=round(level.level * math.exp(-down), 2),
        upper=round(level.level * math.exp(up), 2),
        method=f"robust z of the log ratio to the median of the last {weeks(level.weeks)}",
        history=history,
    )


def requests_behind(w: Weeks, credits: Anomaly) -> Anomaly | None:
    """When credits spent spiked because requests did (credits per request as usual), the finding
    is the requests', even below their own rules: one cause, one finding."""
    t = w.t
    counts = [float(week.total_requests) for week in w.history]
    observed = float(w.current.total_requests)
    level = level_of(counts, observed, t)
    if level is None or credits.expected <= 0 or level.gap <= 0:
        return None
    if level.ratio * (1 + t.min_credit_shift) < credits.observed / credits.expected:
        return None  # the spend grew faster than the requests: not the volume alone
    return _week_finding(w, level, "totalRequests", "Requests", (*counts, observed), forced=credits.severity)


def _shift_finding(
    w: Weeks, shift: Shift, metric: str, label: str, history: tuple[float, ...], direction: int
) -> Anomaly:
    t = w.t
    since = w.week_id(shift.start)
    when = f"for {weeks(shift.weeks)}" + (f" (since {since})" if since else "")
    moved = "up" if direction > 0 else "down"
    message = (
        f"{label} stepped {moved} to {times(shift.ratio)} their earlier level {when}: "
        f"{number(round(shift.observed))} a week vs {number(round(shift.level))}"
    )
    rule = shift.ratio > t.spike_ratio if direction > 0 else shift.ratio < t.drop_ratio
    edge = t.min_volume_ratio
    return Anomaly(
        kind="level_shift",
        metric=metric,
        dimension=None,
        key=None,
        observed=round(shift.observed, 2),
        expected=round(shift.level, 2),
        score=round(shift.z, 2),
        severity="warning" if rule else "info",
        message=message,
        lower=round(shift.level * t.drop_ratio, 2),
        upper=round(shift.level * edge, 2),
        method="each week of the run against the median of the weeks before it and of all earlier weeks",
        since=since,
        history=history,
    )


def _one_per_direction(found: list[Anomaly]) -> list[Anomaly]:
    """A level shift says more than a spike of the same week in the same direction: it is kept,
    with the more severe of the two severities."""
    kept = []
    for finding in found:
        same = [other for other in found if other.direction == finding.direction]
        if finding.kind != "level_shift" and any(other.kind == "level_shift" for other in same):
            continue
        severity = finding.severity
        for other in same:
            severity = higher(severity, other.severity)
        kept.append(replace(finding, severity=severity))
    return kept
