"""Credits per completed request: a change of price, or a mix moving towards dearer sizes.

Credits spent can rise sharply while the number of requests stays normal: the traffic moved to
larger, dearer sizes. Credits per completed request has no season, so it is compared with the
recent weeks' median (and, for a sustained change, with the reference weeks), over the sizes that
have had requests every week (a new, dearer size ramping up is not a change of spend).

A size that fails more leaves fewer of its requests completed, which moves credits per completed
request without anyone paying differently; so the charge per finished request (completed and
failed, what the requests cost before refunds) must have moved too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from imagegen.domain.anomalies.findings import Anomaly, higher, number, times
from imagegen.domain.anomalies.series import Noise, Point, Run, Series, Week, one_week, sustained
from imagegen.domain.anomalies.stats import median
from imagegen.domain.anomalies.weeks import Weeks, grade, margin, shown
from imagegen.domain.metrics import Breakdown, Metrics


@dataclass(frozen=True)
class _Spend:
    per_completed: Series
    per_finished: Series
    sizes: list[str]


def _series(w: Weeks) -> _Spend | None:
    sizes = w.established("size")
    if not sizes:
        return None
    noise = _noise(w.current, sizes)
    floor = w.t.credit_floor

    def build(value: type[_PerCompleted] | type[_PerFinished]) -> Series:
        return Series(tuple(value.point(week, sizes) for week in w.all), noise, floor, weighted=False)

    return _Spend(build(_PerCompleted), build(_PerFinished), sizes)


class _PerCompleted:
    @staticmethod
    def point(week: Metrics, sizes: Sequence[str]) -> Point | None:
        part = _sum(week, sizes)
        if part.completed <= 0 or part.credits <= 0:
            return None
        return Point(math.log(part.credits / part.completed), part.completed)


class _PerFinished:
    @staticmethod
    def point(week: Metrics, sizes: Sequence[str]) -> Point | None:
        part = _sum(week, sizes)
        charged = part.credits + part.refunded
        if part.finished <= 0 or charged <= 0:
            return None
        return Point(math.log(charged / part.finished), part.finished)


def _sum(week: Metrics, sizes: Sequence[str]) -> Breakdown:
    total = Breakdown()
    for size in sizes:
        total = total + week.by_size.get(size, Breakdown())
    return total


def _noise(week: Metrics, sizes: Sequence[str]) -> Noise:
    """The sampling spread of log(credits per request) on n requests: the coefficient of variation
    of one request's cost in this period's size mix, over sqrt(n)."""
    part = _sum(week, sizes)
    cv = 0.0
    if part.completed > 0 and part.credits > 0:
        mean = part.credits / part.completed
        square = sum(
            (b.credits / b.completed) ** 2 * b.completed / part.completed
            for b in (week.by_size.get(s, Breakdown()) for s in sizes)
            if b.completed > 0
        )
        cv = math.sqrt(max(square - mean**2, 0.0)) / mean

    def noise(centre: float, value: float, n: float) -> float:
        return math.inf if n <= 0 else cv / math.sqrt(n)

    return noise


def spend_finding(w: Weeks) -> Anomaly | None:
    """A shift in credits per completed request, in the period or sustained over the last weeks."""
    t = w.t
    if w.current.total_requests < t.min_requests:
        return None
    spend = _series(w)
    if spend is None:
        return None
    minimum = math.log(1 + t.min_credit_shift)
    week = one_week(spend.per_completed, t.recent_weeks, minimum / 2)
    found = None
    if week is not None and _week_fires(week, t.robust_z, t.min_credit_shift):
        charged = one_week(spend.per_finished, t.recent_weeks, minimum / 2)
        if charged is not None and charged.gap * week.direction >= minimum / 2:
            found = _week_finding(w, spend, week)
    run = sustained(spend.per_completed, t, minimum)
    if run is not None and sustained(spend.per_finished, t, minimum / 2, run.direction) is not None:
        finding = _run_finding(w, spend, run)
        return (
            finding if found is None else replace(finding, severity=higher(finding.severity, found.severity))
        )
    return found


def _week_fires(week: Week, z: float, shift: float) -> bool:
    ratio = math.exp(week.gap)
    return week.z >= z and (ratio >= 1 + shift or ratio <= 1 - shift)


def _week_finding(w: Weeks, spend: _Spend, week: Week) -> Anomaly:
    t = w.t
    ratio = math.exp(week.gap)
    change = abs(ratio - 1)
    edge = margin(week.spread, t.robust_z, math.log(1 + t.min_credit_shift))
    now, usual = math.exp(week.centre + week.gap), math.exp(week.centre)
    return Anomaly(
        kind="credit_shift",
        metric="creditsPerRequest",
        dimension=None,
        key=None,
        observed=round(now, 2),
        expected=round(usual, 2),
        score=round(week.z, 2),
        severity=grade(change, week.z, t, t.credit_shift, 2 * t.credit_shift),
        message=f"Credits per completed request {now:.2f} vs {usual:.2f} ({ratio - 1:+.0%}), "
        f"{w.recent_text(week)}{_context(w)}: {_why(w, spend.sizes)}",
        lower=round(usual * math.exp(-edge), 2),
        upper=round(usual * math.exp(edge), 2),
        method=f"robust z of the log ratio to {w.recent_text(week)}",
        history=shown(spend.per_completed, log=True),
    )


def _run_finding(w: Weeks, spend: _Spend, run: Run) -> Anomaly:
    t = w.t
    ratio = math.exp(run.gap)
    level, usual = math.exp(run.level), math.exp(run.centre)
    moved = (
        ("has been rising" if run.gap > 0 else "has been falling")
        if run.shape == "drift"
        else ("stepped up" if run.gap > 0 else "stepped down")
    )
    edge = margin(run.spread, t.sustained_z, math.log(1 + t.min_credit_shift))
    return Anomaly(
        kind=run.shape,
        metric="creditsPerRequest",
        dimension=None,
        key=None,
        observed=round(level, 2),
        expected=round(usual, 2),
        score=round(run.z, 2),
        severity=grade(abs(ratio - 1), run.z, t, t.credit_shift, 2 * t.credit_shift),
        message=f"Credits per completed request {moved} {w.since_text(run)}: {level:.2f} over the last 2 "
        f"weeks vs {usual:.2f}, {w.reference_text(run)} ({ratio - 1:+.0%}){_context(w)}: "
        f"{_why(w, spend.sizes)}",
        lower=round(usual * math.exp(-edge), 2),
        upper=round(usual * math.exp(edge), 2),
        method=f"CUSUM excursion against {w.reference_text(run)}; the last 2 weeks pooled",
        since=w.week_id(run.start),
        history=shown(spend.per_completed, log=True),
    )


def _context(w: Weeks) -> str:
    """Credits spent and requests against their levels, in a few words."""

    def ratio(field: str) -> float | None:
        recent = [float(getattr(week, field)) for week in w.history[-w.t.level_weeks :]]
        level = median(recent) if recent else 0.0
        return None if level <= 0 else float(getattr(w.current, field)) / level

    spent, requests = ratio("total_credits_spent"), ratio("total_requests")
    if spent is None or requests is None:
        return ""
    return f"; credits spent {times(spent)} their level with requests at {times(requests)}"


def _why(w: Weeks, sizes: Sequence[str]) -> str:
    """Which part moved: the size mix, or the credits each size costs (a price change)."""
    recent = w.history[-w.t.recent_weeks :]
    now = _sum(w.current, sizes)
    share, cost, usual_share, usual_cost = {}, {}, {}, {}
    for size in sizes:
        counts = w.current.by_size.get(size, Breakdown())
        share[size] = counts.completed / now.completed if now.completed else 0.0
        cost[size] = counts.credits / counts.completed if counts.completed else 0.0
        shares = [_share(week, size, sizes) for week in recent]
        costs = [
            b.credits / b.completed for b in (week.by_size.get(size) for week in recent) if b and b.completed
        ]
        usual_share[size] = median([s for s in shares if s is not None] or [0.0])
        usual_cost[size] = median(costs) if costs else cost[size]
    mix = {s: (share[s] - usual_share[s]) * usual_cost[s] for s in sizes}
    price = {s: share[s] * (cost[s] - usual_cost[s]) for s in sizes}
    if sum(abs(v) for v in mix.values()) >= sum(abs(v) for v in price.values()):
        movers = sorted(sizes, key=lambda s: -abs(share[s] - usual_share[s]))[:2]
        parts = [f"{s} {share[s]:.0%} of completed requests vs {usual_share[s]:.0%}" for s in movers]
        return "the size mix moved (" + ", ".join(parts) + ")"
    movers = sorted(sizes, key=lambda s: -abs(price[s]))[:2]
    parts = [
        f"{s} {number(round(cost[s], 2))} credits a request vs {number(round(usual_cost[s], 2))}"
        for s in movers
    ]
    return "the sizes cost more or less per request at about the same mix (" + ", ".join(parts) + ")"


def _share(week: Metrics, size: str, sizes: Sequence[str]) -> float | None:
    total = _sum(week, sizes).completed
    return None if total <= 0 else week.by_size.get(size, Breakdown()).completed / total
