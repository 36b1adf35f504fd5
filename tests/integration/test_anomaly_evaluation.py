"""The anomaly evaluation (bench/anomalies.py) on a small set: synthetic weeks with injected anomalies,
imported through the real import path into SQLite, reported week by week, and scored.

The full run is `.venv/bin/python -m bench.anomalies`; this one keeps to 2 scenarios x 18 weeks x
~600 requests a week (8 warm-up weeks, then all five kinds of anomaly between the two scenarios).
"""

from __future__ import annotations

import pytest
from bench.anomalies import (
    DRIFT,
    KINDS,
    PREVIOUS_WEEK,
    Alarm,
    Config,
    Evaluation,
    Label,
    evaluate,
    judge,
    plan_scenarios,
    previous_week_rules,
)

from imagegen.domain.reports import GroupCount, summarize

SMALL = Config(weeks=18, scenarios=2, seed=1, requests_per_week=600)


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    return evaluate(SMALL)


def test_the_small_set_injects_every_kind_of_anomaly_after_the_warm_up() -> None:
    labels = [label for scenario in plan_scenarios(SMALL) for label in scenario.labels()]
    assert {label.kind for label in labels if label.positive} == set(KINDS)
    assert min(label.week for label in labels) >= SMALL.warmup


def test_the_detector_raises_few_false_alarms(evaluation: Evaluation) -> None:
    overall = evaluation.score("imagegen").overall
    assert overall.precision is not None and overall.precision >= 0.95, overall


def test_the_detector_finds_the_injected_anomalies(evaluation: Evaluation) -> None:
    overall = evaluation.score("imagegen").overall
    assert overall.recall is not None and overall.recall >= 0.95, overall


def test_the_detector_beats_the_previous_week_rules(evaluation: Evaluation) -> None:
    ours, theirs = evaluation.score("imagegen").overall, evaluation.score(PREVIOUS_WEEK).overall
    assert ours.f1 > theirs.f1, (ours, theirs)


def test_the_previous_week_rules_have_no_volume_guard_as_in_the_case_study() -> None:
    one = summarize([GroupCount("model-a", "anime", "vibrant", "512x512", "completed", 1, 1)], 1)
    four = summarize([GroupCount("model-a", "anime", "vibrant", "512x512", "completed", 4, 4)], 1)
    assert {finding.metric for finding in previous_week_rules(four, one)} == {
        "totalRequests",
        "totalCreditsSpent",
    }


def test_a_drift_week_not_yet_anomalous_neither_counts_for_nor_against_a_detector() -> None:
    early = Label(10, DRIFT, "style", "sketch", positive=False)
    late = Label(13, DRIFT, "style", "sketch", positive=True)
    assert judge(Alarm(10, "failure_rate_jump", "style", "sketch"), [early]) == "ignored"
    assert judge(Alarm(13, "failure_rate_jump", "style", "sketch"), [late]) == late
    assert judge(Alarm(13, "failure_rate_jump", "style", "anime"), [late]) == "false"
    assert judge(Alarm(13, "failure_rate_jump", "model", "model-a"), [late]) == "ignored"
