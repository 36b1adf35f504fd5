"""The second anomaly benchmark (bench/weekly_review.py), small: two fixed seeds of 8 scenarios x
40 weeks x ~2,500 requests a week, every class and hard negative drawn, judged by the detector.

The full run is `.venv/bin/python -m bench.weekly_review` (72 scenarios x 40 weeks x ~5,000).
"""

from __future__ import annotations

import pytest
from bench.weekly_review import (
    CLASSES,
    IMAGEGEN,
    PREVIOUS_WEEK,
    SPEND_UP,
    VOLUME_UP,
    Alarm,
    Config,
    Evaluation,
    Event,
    Identity,
    ScenarioRun,
    evaluate,
    plan_scenarios,
    score,
)

SEEDS = (1, 2)
SMALL = [Config(scenarios=8, weeks=40, seed=seed, requests=2500) for seed in SEEDS]


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    parts = [evaluate(config) for config in SMALL]
    return Evaluation(SMALL[0], [run for part in parts for run in part.runs], sum(p.seconds for p in parts))


def test_the_small_set_injects_every_class_after_the_warm_up() -> None:
    events = [event for config in SMALL for scenario in plan_scenarios(config) for event in scenario.events]
    assert {event.cls for event in events} == set(CLASSES)
    assert min(event.start for event in events) >= SMALL[0].warmup


def test_the_detector_finds_what_a_weekly_review_must_not_miss(evaluation: Evaluation) -> None:
    overall = evaluation.score(IMAGEGEN).overall
    assert overall.recall is not None and overall.recall >= 0.95, overall


def test_the_detector_raises_no_false_alarm_worth_the_name(evaluation: Evaluation) -> None:
    overall = evaluation.score(IMAGEGEN).overall
    assert overall.precision is not None and overall.precision >= 0.95, overall


def test_the_previous_week_rules_do_far_worse_on_the_same_weeks(evaluation: Evaluation) -> None:
    ours, theirs = evaluation.score(IMAGEGEN).overall, evaluation.score(PREVIOUS_WEEK).overall
    assert (theirs.precision or 0.0) < 0.5 and (theirs.recall or 0.0) < 0.5, theirs
    assert ours.detected > 2 * theirs.detected


def _run(events: list[Event], alarms: list[Alarm]) -> ScenarioRun:
    scenario = plan_scenarios(Config(scenarios=1))[0]
    scenario.events = events
    return ScenarioRun(scenario, [set() for _ in range(40)], {IMAGEGEN: alarms, PREVIOUS_WEEK: []}, 0)


def test_an_event_counts_once_and_its_repeats_neither_help_nor_hurt() -> None:
    shift = Event("failure_level_shift", "+9 pts", 9.0, start=20, weeks=5, dimension="size", key="512x512")
    about = Identity("failure", "size", "512x512")
    alarms = [Alarm(21, about, "failure_rate_jump"), Alarm(22, about, "level_shift")]

    result = score([_run([shift], alarms)], IMAGEGEN)

    assert (result.overall.tp, result.overall.fp, result.repeats) == (1, 0, 1)
    assert result.by_class["failure_level_shift"].recall == 1.0


def test_a_cascade_of_one_failing_key_counts_against_the_detector() -> None:
    jump = Event("failure_rate_jump", "+20 pts", 20.0, start=20, weeks=1, dimension="style", key="anime")
    alarms = [
        Alarm(20, Identity("failure", "style", "anime"), "failure_rate_jump"),
        Alarm(20, Identity("success"), "success_rate_drop"),  # the total, moved by anime alone
        Alarm(21, VOLUME_UP, "spike"),  # the rebound week
    ]

    result = score([_run([jump], alarms)], IMAGEGEN)

    assert (result.overall.tp, result.overall.fp) == (1, 2)
    assert result.by_class["success_rate_drop"].fp == 1
    assert result.by_class["request_spike"].fp == 1


def test_a_moved_size_makes_its_spend_true_by_construction() -> None:
    shift = Event("share_shift", "+20 pts", 20.0, start=20, weeks=2, dimension="size", key="1024x1792")
    alarms = [
        Alarm(20, Identity("share", "size", "1024x1792"), "share_shift"),
        Alarm(20, SPEND_UP, "credit_shift"),
    ]

    result = score([_run([shift], alarms)], IMAGEGEN)

    assert (result.overall.tp, result.overall.fp, result.allowed) == (1, 0, 1)
