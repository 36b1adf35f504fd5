"""Failure rates: the overall success rate, and each model, style, size and color's failure rate.

One failing key lifts the totals and every key of the other dimensions its requests pass through;
a surge lifts every key. Neither is news about those keys, so a key is judged on how much more it
rose than the rest of the period (the requests outside it), and the success rate is withheld when
one key's finding, or a shift of traffic towards keys that always fail more, accounts for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from imagegen.domain.anomalies.findings import Anomaly, higher
from imagegen.domain.anomalies.series import Run, Series, Week, one_week, settled, sustained
from imagegen.domain.anomalies.stats import median, robust_spread
from imagegen.domain.anomalies.thresholds import Thresholds
from imagegen.domain.anomalies.weeks import Weeks, grade, margin, shown
from imagegen.domain.metrics import DIMENSIONS, Breakdown, Metrics


def key_findings(w: Weeks) -> list[Anomaly]:
    """A failure-rate jump, drift or level shift of one model, style, size or color."""
    t, found = w.t, []
    for dimension in DIMENSIONS:
        for key, now in w.current.breakdown(dimension).items():
            if now.finished < t.min_key_requests or now.finished >= w.current.finished_requests:
                continue  # too few to judge; or the whole period, which the success rate judges
            finding = _key_finding(w, dimension, key)
            if finding is not None:
                found.append(finding)
    return found


def _part(dimension: str, key: str) -> Callable[[Metrics], Breakdown | None]:
    return lambda week: week.breakdown(dimension).get(key)


def _rest(dimension: str, key: str) -> Callable[[Metrics], Breakdown | None]:
    return lambda week: week.overall - week.breakdown(dimension).get(key, Breakdown())


def _key_finding(w: Weeks, dimension: str, key: str) -> Anomaly | None:
    t = w.t
    own, rest = w.failure_series(_part(dimension, key)), w.failure_series(_rest(dimension, key))
    label = f"Failure rate of {dimension} '{key}'"
    known = sum(1 for p in own.history[-t.recent_weeks :] if p is not None)
    if known < t.min_baseline_weeks:
        # New in the catalog: compared with the failure rate of all requests, so that a new model
        # failing half the time is still news.
        overall = w.failure_series(lambda week: week.overall)
        mixed = replace(own, points=(*overall.history, own.current))
        note = f" of all requests: this {dimension} is new"
        return _week_finding(w, mixed, rest, label, note, dimension, key)
    week = _week_finding(w, own, rest, label, "", dimension, key)
    run = sustained(own, t, t.min_failure_rise, direction=1)
    if run is not None and _stands_out(run.gap, run.spread, _run_gap(rest, run, t.monitor_weeks), t):
        finding = _run_finding(w, own, run, label, dimension, key, t.failure_rate_jump)
        return finding if week is None else replace(finding, severity=higher(finding.severity, week.severity))
    return week


def _stands_out(gap: float, spread: float, rest: tuple[float, float], t: Thresholds) -> bool:
    """Whether a key rose clearly more than the requests outside it: by the practical minimum, by
    at least half its own rise, and beyond chance (robust_z, the key's and the rest's spreads
    together). `rest` is the rest's (rise, spread)."""
    rest_gap, rest_spread = rest
    beyond = gap - max(rest_gap, 0.0)
    return beyond >= max(t.min_failure_rise, gap / 2) and beyond >= t.robust_z * math.hypot(
        spread, rest_spread
    )


def _run_gap(rest: Series, run: Run, monitor: int) -> tuple[float, float]:
    """How much the rest of the period rose over the run's last two weeks against its reference,
    and the spread of that rise."""
    reference = [p.value for p in rest.points[:-monitor] if p is not None]
    last = [p for p in rest.points[-2:] if p is not None]
    if not reference or not last:
        return 0.0, 0.0
    pooled, centre = rest.pooled(last), median(reference)
    return pooled.value - centre, rest.noise(centre, pooled.value, pooled.n)


def _week_finding(
    w: Weeks, own: Series, rest: Series, label: str, note: str, dimension: str, key: str
) -> Anomaly | None:
    """The key against the rest of the period: the weekly gap between the key's failure rate and
    the rest's, against its recent median. Whatever moves every key (a surge, the weekly wobble of
    the models) moves the rest too and cancels out."""
    t = w.t
    settle = t.min_failure_rise / 2
    week, rest_week = one_week(own, t.recent_weeks, settle), one_week(rest, t.recent_weeks, settle)
    if week is None or rest_week is None or week.gap <= 0:
        return None
    beyond = _beyond_rest(own, rest, week, rest_week, t)
    if beyond is None:
        return None
    # The key's rise beyond the rest's, never more than its own rise (a rest that recovered from
    # its own trouble does not make a key news).
    gap, spread = min(beyond[0], week.gap), beyond[1]
    z = gap / spread
    if gap < max(t.min_failure_rise, week.gap / 2):
        return None  # the rest rose (nearly) as much: not this key's news
    rule = week.gap >= t.failure_rate_jump and z >= t.rule_z
    if not (rule or z >= t.robust_z):
        return None
    now, rest_rise = week.centre + week.gap, max(rest_week.gap, 0.0)
    upper = week.centre + rest_rise + margin(spread, t.robust_z, t.min_failure_rise, t.failure_rate_jump)
    moved = f", while the rest of the period moved {rest_week.gap:+.1f}" if abs(rest_week.gap) >= 2 else ""
    return Anomaly(
        kind="failure_rate_jump",
        metric="failureRate",
        dimension=dimension,
        key=key,
        observed=round(now, 2),
        expected=round(week.centre, 2),
        score=round(z, 2),
        severity=grade(week.gap, z, t, t.failure_rate_jump, 2 * t.failure_rate_jump),
        message=f"{label} {now:.1f}% vs {week.centre:.1f}% ({week.gap:+.1f} points{moved}), "
        f"{w.recent_text(week)}{note}",
        upper=round(upper, 2),
        method=f"robust z of its gap to the rest of the period, against {w.recent_text(week)}"
        f"{' of all requests' if note else ''}",
        history=shown(own),
    )


def _beyond_rest(
    own: Series, rest: Series, week: Week, rest_week: Week, t: Thresholds
) -> tuple[float, float] | None:
    """(gap, spread) of this week's key-minus-rest difference against the recent weeks' median."""
    pairs = list(zip(own.history[-t.recent_weeks :], rest.history[-t.recent_weeks :], strict=True))
    diffs = settled(
        [k.value - r.value for k, r in pairs if k is not None and r is not None], t.min_failure_rise / 2
    )
    now, other = own.current, rest.current
    if not diffs or now is None or other is None:
        return None
    centre = median(diffs)
    sampling = math.hypot(
        own.noise(week.centre, now.value, now.n), rest.noise(rest_week.centre, other.value, other.n)
    )
    spread = max(robust_spread(diffs, centre), sampling, t.rate_floor)
    return now.value - other.value - centre, spread


def _run_finding(
    w: Weeks, series: Series, run: Run, label: str, dimension: str | None, key: str | None, rule: float
) -> Anomaly:
    t = w.t
    gap = abs(run.gap)
    moved = "has been rising" if run.shape == "drift" else "stepped up"
    now = series.current
    this_week = "" if now is None else f" ({now.value:.1f}% this week)"
    return Anomaly(
        kind=run.shape,
        metric="failureRate",
        dimension=dimension,
        key=key,
        observed=round(run.level, 2),
        expected=round(run.centre, 2),
        score=round(run.z, 2),
        severity=grade(gap, run.z, t, rule, 2 * rule),
        message=f"{label} {moved} {w.since_text(run)}: {run.level:.1f}% over the last 2 weeks{this_week} "
        f"vs {run.centre:.1f}%, {w.reference_text(run)} ({run.gap:+.1f} points)",
        upper=round(run.centre + margin(run.spread, t.sustained_z, t.min_failure_rise), 2),
        method=f"CUSUM excursion against {w.reference_text(run)}; the last 2 weeks pooled",
        since=w.week_id(run.start),
        history=shown(series),
    )


# -- the success rate --------------------------------------------------------------------------


def success_finding(w: Weeks) -> Anomaly | None:
    """A drop, drift or level shift of the overall success rate (judged as its failure rate)."""
    t = w.t
    if w.current.finished_requests < t.min_requests:
        return None
    failures = w.failure_series(lambda week: week.overall)
    week = one_week(failures, t.recent_weeks, t.min_success_drop / 2)
    found = None
    if week is not None and week.gap > 0:
        rule = week.gap >= t.success_rate_drop and week.z >= t.rule_z
        if rule or (week.z >= t.robust_z and week.gap >= t.min_success_drop):
            found = _success_week(w, failures, week)
    run = sustained(failures, t, t.min_success_drop, direction=1)
    if run is not None:
        finding = _success_run(w, failures, run)
        return (
            finding if found is None else replace(finding, severity=higher(finding.severity, found.severity))
        )
    return found


def _success_week(w: Weeks, failures: Series, week: Week) -> Anomaly:
    t = w.t
    now, centre = 100 - (week.centre + week.gap), 100 - week.centre
    lower = centre - margin(week.spread, t.robust_z, t.min_success_drop, t.success_rate_drop)
    return Anomaly(
        kind="success_rate_drop",
        metric="successRate",
        dimension=None,
        key=None,
        observed=round(now, 2),
        expected=round(centre, 2),
        score=round(week.z, 2),
        severity=grade(week.gap, week.z, t, t.success_rate_drop, 2 * t.success_rate_drop),
        message=f"Success rate {now:.1f}% vs {centre:.1f}% ({-week.gap:+.1f} points), {w.recent_text(week)}",
        lower=round(lower, 2),
        method=f"robust z against {w.recent_text(week)}",
        history=_success_values(failures),
    )


def _success_run(w: Weeks, failures: Series, run: Run) -> Anomaly:
    t = w.t
    observed, expected = 100 - run.level, 100 - run.centre
    moved = "has been falling" if run.shape == "drift" else "stepped down"
    now = failures.current
    this_week = "" if now is None else f" ({100 - now.value:.1f}% this week)"
    return Anomaly(
        kind=run.shape,
        metric="successRate",
        dimension=None,
        key=None,
        observed=round(observed, 2),
        expected=round(expected, 2),
        score=round(run.z, 2),
        severity=grade(run.gap, run.z, t, t.success_rate_drop, 2 * t.success_rate_drop),
        message=f"Success rate {moved} {w.since_text(run)}: {observed:.1f}% over the last 2 weeks{this_week} "
        f"vs {expected:.1f}%, {w.reference_text(run)} ({observed - expected:+.1f} points)",
        lower=round(expected - margin(run.spread, t.sustained_z, t.min_success_drop), 2),
        method=f"CUSUM excursion against {w.reference_text(run)}; the last 2 weeks pooled",
        since=w.week_id(run.start),
        history=_success_values(failures),
    )


def _success_values(failures: Series) -> tuple[float | None, ...]:
    return tuple(None if p is None else round(100 - p.value, 2) for p in failures.points)


# -- why the success rate moved ----------------------------------------------------------------


def explained_by_key(w: Weeks, success: Anomaly, keys: list[Anomaly]) -> Anomaly | None:
    """The key finding that accounts for the success rate's fall: the requests outside that key
    failed no more than the band allows against their own recent median."""
    if success.lower is None:
        return None
    width, best, best_rise = success.expected - success.lower, None, 0.0
    for finding in keys:
        if finding.dimension is None or finding.key is None:
            continue
        rest_series = w.failure_series(_rest(finding.dimension, finding.key))
        rest = one_week(rest_series, w.t.recent_weeks, w.t.min_success_drop / 2)
        if rest is not None and rest.gap < width and (best is None or rest.gap < best_rise):
            best, best_rise = finding, rest.gap
    return best


@dataclass(frozen=True)
class MixEffect:
    """The overall failure rate the period's mix of one dimension would have at usual key rates."""

    dimension: str
    key: str  # the key whose shift towards it lifted the failure rate most
    expected_success: float
    key_rate: float  # that key's usual failure rate
    others_rate: float  # the usual failure rate of the other keys


def explained_by_mix(w: Weeks, success: Anomaly) -> MixEffect | None:
    """A fall that is only traffic moving towards keys that always fail more: at each key's usual
    failure rate, this period's mix gives a success rate inside the band."""
    if success.lower is None:
        return None
    width = success.expected - success.lower
    best = None
    for dimension in DIMENSIONS:
        effect = _mix_effect(w, dimension, 100 - success.expected)
        if effect is None or success.observed < effect.expected_success - width:
            continue
        if best is None or effect.expected_success < best.expected_success:
            best = effect
    return best


def _mix_effect(w: Weeks, dimension: str, overall_rate: float) -> MixEffect | None:
    t, current = w.t, w.current
    if current.finished_requests <= 0:
        return None
    usual: dict[str, float] = {}
    for key in current.breakdown(dimension):
        rates = [p.value for p in w.failure_series(_part(dimension, key)).history[-t.recent_weeks :] if p]
        usual[key] = median(rates) if len(rates) >= t.min_baseline_weeks else overall_rate
    now = current.breakdown(dimension)
    expected_failure = sum(now[k].finished * usual[k] for k in now) / current.finished_requests
    before = _finished_shares(w.history[-t.recent_weeks :], dimension)

    def lift(key: str) -> float:
        return (now[key].finished / current.finished_requests - before.get(key, 0.0)) * (
            usual[key] - overall_rate
        )

    key = max(now, key=lift)
    rest = [usual[k] for k in now if k != key]
    return MixEffect(
        dimension, key, 100 - expected_failure, usual[key], median(rest) if rest else overall_rate
    )


def _finished_shares(history: tuple[Metrics, ...], dimension: str) -> dict[str, float]:
    shares: dict[str, list[float]] = {}
    for week in history:
        if week.finished_requests <= 0:
            continue
        for key, counts in week.breakdown(dimension).items():
            shares.setdefault(key, []).append(counts.finished / week.finished_requests)
    return {key: median(values) for key, values in shares.items()}


def mix_text(effect: MixEffect, success: Anomaly) -> str:
    return (
        f"traffic moved towards {effect.dimension} '{effect.key}', which usually fails "
        f"{effect.key_rate:.1f}% vs {effect.others_rate:.1f}% for the others: the overall success rate "
        f"fell to {_fall(success)} although no {effect.dimension} failed more than usual"
    )


def key_text(success: Anomaly) -> str:
    return f"with it the overall success rate fell to {_fall(success)}"


def _fall(success: Anomaly) -> str:
    return f"{success.observed:.1f}% ({success.observed - success.expected:+.1f} points)"
