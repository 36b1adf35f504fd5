"""Shares: the part of a dimension's requests that goes to one size, model or style.

When one key gains, the others lose by construction: a dimension gives at most one finding, the
key that moved most, and its message names the keys the traffic came from (or went to). Shares are
taken among the keys that had requests every week, so a new style ramping up moves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagegen.domain.anomalies.findings import Anomaly, higher
from imagegen.domain.anomalies.series import Point, Run, Series, Week, one_week, sustained
from imagegen.domain.anomalies.stats import binomial_points
from imagegen.domain.anomalies.thresholds import Thresholds
from imagegen.domain.anomalies.weeks import Weeks, band, grade, margin, shown

SHARE_DIMENSIONS = ("size", "model", "style")
MIN_RELATIVE_SHIFT = 0.2


@dataclass(frozen=True)
class _Moved:
    key: str
    series: Series
    week: Week | None  # when the period alone moved enough
    run: Run | None  # when the move has lasted

    @property
    def signed(self) -> float:
        return self.run.gap if self.run is not None else self.week.gap if self.week is not None else 0.0

    @property
    def gap(self) -> float:
        return abs(self.signed)


def share_findings(w: Weeks) -> list[Anomaly]:
    found = []
    for dimension in SHARE_DIMENSIONS:
        finding = _dimension_finding(w, dimension)
        if finding is not None:
            found.append(finding)
    return found


def _dimension_finding(w: Weeks, dimension: str) -> Anomaly | None:
    t = w.t
    keys = w.established(dimension)
    counts = w.current.breakdown(dimension)
    total = sum(counts[k].total for k in keys if k in counts)
    if len(keys) < 2 or total < t.min_requests:
        return None
    moved = [m for m in (_moved(w, dimension, key, keys) for key in keys) if m is not None]
    if not moved:
        return None
    # The key that moved most; of two that moved as much (two models), the one that gained.
    top = max(moved, key=lambda m: (round(m.gap), m.signed > 0))
    return _finding(w, dimension, top, keys)


def _series(w: Weeks, dimension: str, key: str, keys: list[str]) -> Series:
    points = []
    for week in w.all:
        counts = week.breakdown(dimension)
        total = sum(counts[k].total for k in keys if k in counts)
        part = counts[key].total if key in counts else 0
        points.append(None if total <= 0 else Point(100 * part / total, total))
    return Series(tuple(points), binomial_points, w.t.share_floor, weighted=True)


def _moved(w: Weeks, dimension: str, key: str, keys: list[str]) -> _Moved | None:
    t = w.t
    series = _series(w, dimension, key, keys)
    week = one_week(series, t.recent_weeks, t.min_share_shift / 2)
    if week is None:
        return None
    now = week.centre + week.gap
    if max(now, week.centre) < t.min_share:
        return None  # a rare key: its share moves by chance
    fires = _enough(week.centre, now, t) and week.z >= t.robust_z
    run = sustained(series, t, t.min_share_shift)
    if run is not None and not _enough(run.centre, run.level, t):
        run = None
    if not fires and run is None:
        return None
    return _Moved(key, series, week if fires else None, run)


def _enough(before: float, now: float, t: Thresholds) -> bool:
    """A share moves enough when it moves `min_share_shift` points and by a fifth of itself (a
    half of the traffic drifting by 7 points is the ordinary wander of a big key)."""
    return abs(now - before) >= t.min_share_shift and abs(now - before) >= MIN_RELATIVE_SHIFT * max(
        before, now
    )


def _finding(w: Weeks, dimension: str, top: _Moved, keys: list[str]) -> Anomaly:
    t = w.t
    now = top.series.current
    assert now is not None
    others = _counter_moves(w, dimension, top, keys)
    history = shown(top.series)
    label = f"Share of {dimension} '{top.key}'"
    if top.run is not None:
        run = top.run
        moved = "has been growing" if run.gap > 0 else "has been shrinking"
        if run.shape == "level_shift":
            moved = "stepped up" if run.gap > 0 else "stepped down"
        edge = margin(run.spread, t.sustained_z, t.min_share_shift)
        lower, upper = band(run.centre, edge, edge)
        severity = grade(abs(run.gap), run.z, t, t.share_shift, 2 * t.share_shift)
        if top.week is not None:
            week_severity = grade(abs(top.week.gap), top.week.z, t, t.share_shift, 2 * t.share_shift)
            severity = higher(severity, week_severity)
        return Anomaly(
            kind=run.shape,
            metric="share",
            dimension=dimension,
            key=top.key,
            observed=round(run.level, 2),
            expected=round(run.centre, 2),
            score=round(run.z, 2),
            severity=severity,
            message=f"{label} {moved} {w.since_text(run)}: {run.level:.1f}% of its requests over the last "
            f"2 weeks ({now.value:.1f}% this week) vs {run.centre:.1f}%, {w.reference_text(run)} "
            f"({run.gap:+.1f} points){others}",
            lower=lower,
            upper=upper,
            method=f"CUSUM excursion against {w.reference_text(run)}; the last 2 weeks pooled",
            since=w.week_id(run.start),
            history=history,
        )
    week = top.week
    assert week is not None
    edge = margin(week.spread, t.robust_z, t.min_share_shift)
    lower, upper = band(week.centre, edge, edge)
    return Anomaly(
        kind="share_shift",
        metric="share",
        dimension=dimension,
        key=top.key,
        observed=round(now.value, 2),
        expected=round(week.centre, 2),
        score=round(week.z, 2),
        severity=grade(abs(week.gap), week.z, t, t.share_shift, 2 * t.share_shift),
        message=f"{label} {now.value:.1f}% of its requests vs {week.centre:.1f}% ({week.gap:+.1f} points), "
        f"{w.recent_text(week)}{others}",
        lower=lower,
        upper=upper,
        method=f"robust z against {w.recent_text(week)}",
        history=history,
    )


def _counter_moves(w: Weeks, dimension: str, top: _Moved, keys: list[str]) -> str:
    """The keys that moved the other way most: where the traffic came from, or went to."""
    t, direction = w.t, 1 if (top.run or top.week).gap > 0 else -1  # type: ignore[union-attr]
    moves = []
    for key in keys:
        if key == top.key:
            continue
        week = one_week(_series(w, dimension, key, keys), t.recent_weeks, t.min_share_shift / 2)
        if week is not None and week.gap * direction < 0:
            moves.append((abs(week.gap), key, week))
    if not moves:
        return ""
    moves.sort(key=lambda m: (-m[0], m[1]))
    parts = [f"{key} {week.centre + week.gap:.1f}% vs {week.centre:.1f}%" for _, key, week in moves[:2]]
    return f"; {'from' if direction > 0 else 'to'} " + ", ".join(parts)
