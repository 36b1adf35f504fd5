"""`detect`: every rule on the period and the weeks before it, one finding per cause."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from imagegen.domain.anomalies import failures, marks, mix, spend, volume
from imagegen.domain.anomalies.findings import Anomaly, Mark, higher, ordered, times
from imagegen.domain.anomalies.thresholds import DEFAULT_THRESHOLDS, Thresholds
from imagegen.domain.anomalies.weeks import Weeks
from imagegen.domain.metrics import Metrics


@dataclass(frozen=True)
class Detection:
    anomalies: list[Anomaly] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline_weeks: int = 0  # weeks of history the baseline was built from
    expected: list[Anomaly] = field(default_factory=list)  # withheld by an operator's mark


def detect(
    current: Metrics,
    baseline: Sequence[Metrics],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    marks_made: Sequence[Mark] = (),
    week_ids: Sequence[str] = (),
) -> Detection:
    """Compare a period's metrics with the preceding weeks' (oldest first).

    `week_ids` names the baseline weeks and then the period (for a drift's `since`); `marks_made`
    are the operators' marks on the previous report and on this one (see `marks.withhold`).
    Leading weeks without a single request are taken to be before the service's history began and
    are ignored; an empty week after the first active one is history (an outage) and counts.
    Findings are ordered by severity, then score.
    """
    t = thresholds
    first = next((i for i, week in enumerate(baseline) if week.total_requests > 0), len(baseline))
    history = tuple(baseline[first:])
    ids: tuple[str | None, ...] = (
        tuple(week_ids[first:]) if len(week_ids) == len(baseline) + 1 else (None,) * (len(history) + 1)
    )
    if len(history) < t.min_baseline_weeks:
        return Detection([], [_too_little_history(len(history), t)], len(history))
    notes = []
    if current.total_requests < t.min_requests:
        notes.append(
            f"only {current.total_requests} requests in the period: the spike, credit, mix and "
            f"success-rate rules need {t.min_requests}"
        )
    w = Weeks(history, current, ids, t)
    findings, more_notes = _findings(w)
    alarms, expected = marks.withhold(ordered(findings), marks_made, ids[-1], t)
    return Detection(alarms, notes + more_notes, len(history), expected)


def _too_little_history(weeks: int, t: Thresholds) -> str:
    have = "no week" if weeks == 0 else f"only {weeks} week{'s' if weeks > 1 else ''}"
    return f"{have} of history; anomaly detection needs {t.min_baseline_weeks}"


def _findings(w: Weeks) -> tuple[list[Anomaly], list[str]]:
    requests = volume.requests_findings(w)
    spending = spend.spend_finding(w)
    shares = mix.share_findings(w)
    keys = failures.key_findings(w)
    success = failures.success_finding(w)
    notes: list[str] = []
    credits = volume.credits_finding(w)
    own_credits = []
    if credits is not None:
        requests, spending, alone = _fold_credits(credits, requests, spending)
        if alone:
            behind = volume.requests_behind(w, credits)
            if behind is None:
                own_credits.append(credits)
            else:
                requests = [*requests, *_fold_credits(credits, [behind], None)[0]]
    if success is not None:
        cause = failures.explained_by_key(w, success, keys)
        if cause is not None:
            keys = [_noted(k, failures.key_text(success)) if k is cause else k for k in keys]
            success = None
    if success is not None:
        effect = failures.explained_by_mix(w, success)
        if effect is not None:
            text = failures.mix_text(effect, success)
            if any(s.dimension == effect.dimension for s in shares):
                shares = [_noted(s, text) if s.dimension == effect.dimension else s for s in shares]
            else:
                notes.append(text[0].upper() + text[1:])
            success = None
    found = [*requests, *own_credits, *shares, *keys]
    found += [f for f in (spending, success) if f is not None]
    return found, notes


def _fold_credits(
    credits: Anomaly, requests: list[Anomaly], spending: Anomaly | None
) -> tuple[list[Anomaly], Anomaly | None, bool]:
    """Credits spent judged on their own join the finding that explains them: a change in credits
    per request (whose message gives them), or a spike in requests (they moved with them)."""
    if spending is not None and spending.direction > 0:
        return requests, replace(spending, severity=higher(spending.severity, credits.severity)), False
    ratio = credits.observed / credits.expected if credits.expected else 0.0
    for i, finding in enumerate(requests):
        if finding.direction > 0:
            folded = _noted(finding, f"credits spent moved with them ({times(ratio)} their level)")
            folded = replace(folded, severity=higher(folded.severity, credits.severity))
            return [*requests[:i], folded, *requests[i + 1 :]], spending, False
    return requests, spending, True


def _noted(finding: Anomaly, text: str) -> Anomaly:
    return replace(finding, message=f"{finding.message}; {text}")
