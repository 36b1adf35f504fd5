"""Report periods, metrics and anomaly detection: pure rules, tested on hand-built data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from imagegen.domain.reports import (
    Breakdown,
    Detection,
    GroupCount,
    Metrics,
    Period,
    Thresholds,
    detect,
    iso_week,
    last_7_days,
    previous_week,
    report_document,
    summarize,
    week_of,
    weeks_before,
)

STYLES = ("realistic", "anime", "sketch")
MODELS = ("model-a", "model-b")


def rows(
    style: str, completed: int, failed: int, *, model: str = "model-a", cost: int = 1
) -> list[GroupCount]:
    """A style's completed and failed requests, all 512x512 and vibrant."""
    return [
        GroupCount(model, style, "vibrant", "512x512", "completed", completed, completed * cost),
        GroupCount(model, style, "vibrant", "512x512", "failed", failed, failed * cost),
    ]


def week(**styles: tuple[int, int]) -> Metrics:
    """A week with `style=(completed, failed)` per style, spread over both models."""
    groups: list[GroupCount] = []
    for style, (completed, failed) in styles.items():
        half_c, half_f = completed // 2, failed // 2
        groups += rows(style.replace("_", " "), half_c, half_f, model="model-a")
        groups += rows(style.replace("_", " "), completed - half_c, failed - half_f, model="model-b")
    return summarize(groups, unique_users=10)


def volume(requests: int, failed: int = 0) -> Metrics:
    """A week of `requests` requests of one style, `failed` of them failed."""
    return week(realistic=(requests - failed, failed))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- periods -----------------------------------------------------------------------------------


def test_an_iso_week_runs_from_monday_midnight_utc_to_the_next_monday() -> None:
    period = iso_week("2026-W47")

    assert period == Period("2026-W47", at("2026-11-16T00:00"), at("2026-11-23T00:00"))
    assert period.start.tzinfo == UTC


def test_week_53_exists_only_in_years_that_have_it() -> None:
    assert iso_week("2026-W53").start == at("2026-12-28T00:00")
    with pytest.raises(ValueError, match="2025 has weeks W01 to W52"):
        iso_week("2025-W53")


@pytest.mark.parametrize(
    "bad",
    ["2026-W60", "2026-W00", "abc", "", "2026W47", "2026-W7", "2026-w47", " 2026-W47", "0000-W01"],
)
def test_a_bad_iso_week_is_refused_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid ISO week"):
        iso_week(bad)


def test_an_iso_week_that_would_end_after_year_9999_is_refused() -> None:
    with pytest.raises(ValueError, match="after year 9999"):
        iso_week("9999-W52")


def test_week_of_finds_the_iso_week_across_a_year_boundary() -> None:
    assert week_of(at("2027-01-01T12:00")).id == "2026-W53"
    assert week_of(at("2026-11-22T23:59:59")).id == "2026-W47"
    assert week_of(at("2026-11-23T00:00")).id == "2026-W48"


def test_the_monday_midnight_run_covers_the_week_that_just_ended() -> None:
    assert previous_week(at("2026-11-23T00:00")).id == "2026-W47"
    assert previous_week(at("2026-11-25T15:30")).id == "2026-W47"


def test_last_7_days_ends_now_and_is_named_after_the_utc_date() -> None:
    now = datetime(2026, 11, 25, 23, 30, tzinfo=timezone(timedelta(hours=-5)))

    period = last_7_days(now)

    assert period.id == "report_2026-11-26"
    assert period.end == at("2026-11-26T04:30")
    assert period.start == at("2026-11-19T04:30")


def test_a_naive_datetime_is_read_as_utc() -> None:
    assert last_7_days(datetime(2026, 11, 25, 8, 0)).end == at("2026-11-25T08:00")


def test_the_weeks_before_an_iso_week_are_named_as_iso_weeks_oldest_first() -> None:
    ids = [p.id for p in weeks_before(iso_week("2026-W02"), 3)]

    assert ids == ["2025-W51", "2025-W52", "2026-W01"]


def test_the_weeks_before_a_7_day_report_are_named_by_their_dates() -> None:
    before = weeks_before(last_7_days(at("2026-11-25T10:00")), 2)

    assert [p.id for p in before] == ["2026-11-04..2026-11-11", "2026-11-11..2026-11-18"]
    assert before[-1].end == at("2026-11-18T10:00")
    assert weeks_before(iso_week("2026-W47"), 0) == []


def test_a_period_is_half_open() -> None:
    period = iso_week("2026-W47")

    assert period.start in period
    assert period.end not in period


# --- metrics -----------------------------------------------------------------------------------

KNOWN_SET = [
    GroupCount("model-a", "anime", "vibrant", "512x512", "completed", 10, 10),
    GroupCount("model-a", "anime", "vibrant", "512x512", "failed", 2, 2),
    GroupCount("model-b", "realistic", "neon", "1024x1024", "completed", 5, 15),
    GroupCount("model-b", "realistic", "neon", "1024x1024", "canceled", 1, 3),
    GroupCount("model-b", "anime", "pastel", "1024x1792", "failed", 3, 12),
    GroupCount("model-a", "sketch", "neon", "1024x1792", "pending", 1, 4),
]


def test_summarize_counts_every_field_of_a_known_set() -> None:
    metrics = summarize(KNOWN_SET, unique_users=4)

    assert metrics == Metrics(
        total_requests=22,
        completed_requests=15,
        failed_requests=5,
        canceled_requests=1,
        total_credits_spent=25,
        total_credits_refunded=14,
        by_model={"model-a": Breakdown(13, 10, 2, 10, 2), "model-b": Breakdown(9, 5, 3, 15, 12)},
        by_style={
            "anime": Breakdown(15, 10, 5, 10, 14),
            "realistic": Breakdown(6, 5, 0, 15, 0),
            "sketch": Breakdown(1, 0, 0, 0, 0),
        },
        by_size={
            "1024x1024": Breakdown(6, 5, 0, 15, 0),
            "1024x1792": Breakdown(4, 0, 3, 0, 12),
            "512x512": Breakdown(12, 10, 2, 10, 2),
        },
        by_color={
            "neon": Breakdown(7, 5, 0, 15, 0),
            "pastel": Breakdown(3, 0, 3, 0, 12),
            "vibrant": Breakdown(12, 10, 2, 10, 2),
        },
        unique_users=4,
    )
    assert metrics.success_rate == 75.0
    assert metrics.by_model["model-a"].failure_rate == 16.67


def test_summarize_gives_the_case_study_json_names() -> None:
    assert summarize(KNOWN_SET, unique_users=4).to_dict() == {
        "totalRequests": 22,
        "completedRequests": 15,
        "failedRequests": 5,
        "canceledRequests": 1,
        "totalCreditsSpent": 25,
        "totalCreditsRefunded": 14,
        "successRate": 75.0,
        "byModel": {
            "model-a": {
                "total": 13,
                "completed": 10,
                "failed": 2,
                "failureRate": 16.67,
                "creditsSpent": 10,
                "creditsRefunded": 2,
            },
            "model-b": {
                "total": 9,
                "completed": 5,
                "failed": 3,
                "failureRate": 37.5,
                "creditsSpent": 15,
                "creditsRefunded": 12,
            },
        },
        "byStyle": {
            "anime": {
                "total": 15,
                "completed": 10,
                "failed": 5,
                "failureRate": 33.33,
                "creditsSpent": 10,
                "creditsRefunded": 14,
            },
            "realistic": {
                "total": 6,
                "completed": 5,
                "failed": 0,
                "failureRate": 0.0,
                "creditsSpent": 15,
                "creditsRefunded": 0,
            },
            "sketch": {
                "total": 1,
                "completed": 0,
                "failed": 0,
                "failureRate": None,
                "creditsSpent": 0,
                "creditsRefunded": 0,
            },
        },
        "bySize": {
            "1024x1024": {
                "total": 6,
                "completed": 5,
                "failed": 0,
                "failureRate": 0.0,
                "creditsSpent": 15,
                "creditsRefunded": 0,
            },
            "1024x1792": {
                "total": 4,
                "completed": 0,
                "failed": 3,
                "failureRate": 100.0,
                "creditsSpent": 0,
                "creditsRefunded": 12,
            },
            "512x512": {
                "total": 12,
                "completed": 10,
                "failed": 2,
                "failureRate": 16.67,
                "creditsSpent": 10,
                "creditsRefunded": 2,
            },
        },
        "byColor": {
            "neon": {
                "total": 7,
                "completed": 5,
                "failed": 0,
                "failureRate": 0.0,
                "creditsSpent": 15,
                "creditsRefunded": 0,
            },
            "pastel": {
                "total": 3,
                "completed": 0,
                "failed": 3,
                "failureRate": 100.0,
                "creditsSpent": 0,
                "creditsRefunded": 12,
            },
            "vibrant": {
                "total": 12,
                "completed": 10,
                "failed": 2,
                "failureRate": 16.67,
                "creditsSpent": 10,
                "creditsRefunded": 2,
            },
        },
        "uniqueUsers": 4,
    }


def test_a_period_without_finished_requests_has_no_success_rate() -> None:
    metrics = summarize([GroupCount("model-a", "anime", "neon", "512x512", "canceled", 2, 2)], 1)

    assert metrics.total_requests == 2
    assert metrics.success_rate is None
    assert metrics.to_dict()["successRate"] is None
    assert summarize([], 0) == Metrics()


def test_summarize_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="negative"):
        summarize([GroupCount("model-a", "anime", "neon", "512x512", "failed", -1, 0)], 0)


def test_metrics_read_back_from_their_json_are_the_same() -> None:
    metrics = summarize(KNOWN_SET, unique_users=4)

    assert Metrics.from_dict(metrics.to_dict()) == metrics


# --- anomaly detection -------------------------------------------------------------------------

# Eight weeks of about a hundred requests, 3-7 % of them failing.
STEADY = [
    volume(n, f) for n, f in [(98, 4), (110, 6), (95, 3), (105, 5), (99, 7), (102, 4), (108, 5), (97, 4)]
]


def test_a_spike_in_requests_is_detected() -> None:
    detection = detect(volume(412, 20), STEADY)

    assert [(a.kind, a.metric, a.severity) for a in detection.anomalies] == [
        ("spike", "totalRequests", "critical")
    ]
    spike = detection.anomalies[0]
    assert (spike.observed, spike.expected) == (412.0, 102.0)  # the level: the last 3 weeks' median
    assert spike.score > 7
    assert spike.lower is not None and spike.upper is not None and spike.lower < 102 < spike.upper < 412
    assert spike.message == (
        "Requests 4.0x their level (412 vs 102, the median of the last 3 weeks); "
        "credits spent moved with them (4.0x their level)"
    )


def test_a_spike_on_a_history_that_swings_that_much_is_only_a_warning() -> None:
    swinging = [volume(n) for n in (60, 300, 80, 280, 70, 320, 90, 260)]

    detection = detect(volume(600), swinging)

    spike = next(a for a in detection.anomalies if a.metric == "totalRequests")
    assert spike.severity == "warning"


def test_one_to_four_requests_is_not_an_alarm() -> None:
    detection = detect(volume(4), [volume(1), volume(1), volume(2), volume(1)])

    assert detection.anomalies == []
    assert detection.notes == [
        "only 4 requests in the period: the spike, credit, mix and success-rate rules need 50"
    ]


def test_a_collapse_in_requests_is_detected_as_a_drop() -> None:
    detection = detect(volume(20, 1), STEADY)

    assert [(a.kind, a.metric, a.severity) for a in detection.anomalies] == [
        ("drop", "totalRequests", "critical")
    ]
    assert detection.anomalies[0].message == (
        "Requests dropped to 0.20x their level (20 vs 102, the median of the last 3 weeks)"
    )


def test_a_success_rate_drop_of_12_points_is_a_warning() -> None:
    detection = detect(volume(100, 17), STEADY)

    drop = next(a for a in detection.anomalies if a.kind == "success_rate_drop")
    assert drop.severity == "warning"


def test_a_success_rate_drop_is_detected() -> None:
    detection = detect(volume(100, 25), STEADY)

    drop = next(a for a in detection.anomalies if a.kind == "success_rate_drop")
    assert (drop.metric, drop.observed, drop.expected) == ("successRate", 75.0, 95.62)
    assert drop.severity == "critical"  # 20.6 points: twice the rule's 10-point margin
    assert drop.message == "Success rate 75.0% vs 95.6% (-20.6 points), the 8-week median"


def test_a_surge_across_every_key_is_reported_once_as_a_success_rate_drop() -> None:
    detection = detect(volume(100, 25), STEADY)

    # Every model, style, size and color fails as much as the rest of the week: none is the cause.
    assert [(a.kind, a.dimension) for a in detection.anomalies] == [("success_rate_drop", None)]


def test_a_failure_rate_jump_on_one_style_is_detected_while_the_others_are_quiet() -> None:
    history = [
        week(realistic=(190 + i, 8 + i % 3), anime=(57 + i % 4, 3), sketch=(188 - i, 9 - i % 2))
        for i in range(8)
    ]

    detection = detect(week(realistic=(192, 9), anime=(42, 20), sketch=(186, 8)), history)

    assert [(a.kind, a.dimension, a.key) for a in detection.anomalies] == [
        ("failure_rate_jump", "style", "anime")
    ]
    jump = detection.anomalies[0]
    assert (jump.observed, jump.expected, jump.severity) == (32.26, 4.88, "warning")
    assert jump.message == ("Failure rate of style 'anime' 32.3% vs 4.9% (+27.4 points), the 8-week median")


def test_a_new_model_that_fails_often_is_compared_with_the_overall_failure_rate() -> None:
    history = [volume(n, f) for n, f in [(200, 10), (210, 9), (190, 11)]]
    current = summarize(
        rows("realistic", 190, 10) + rows("realistic", 20, 20, model="model-c"), unique_users=5
    )

    detection = detect(current, history)

    jump = next(a for a in detection.anomalies if a.key == "model-c")
    assert jump.expected == 5.0
    assert jump.message.endswith("the 3-week median of all requests: this model is new")


def test_a_stable_history_with_normal_noise_raises_nothing() -> None:
    history = [
        week(realistic=(r, rf), anime=(a, af), oil_painting=(o, of))
        for r, rf, a, af, o, of in [
            (120, 6, 60, 3, 40, 2),
            (131, 4, 55, 4, 44, 1),
            (115, 8, 66, 2, 38, 3),
            (126, 5, 58, 5, 41, 2),
            (140, 7, 62, 3, 35, 2),
            (118, 6, 57, 4, 47, 1),
            (124, 3, 64, 3, 39, 3),
            (129, 6, 59, 2, 43, 2),
        ]
    ]

    for current in (
        week(realistic=(135, 8), anime=(52, 5), oil_painting=(45, 3)),
        week(realistic=(112, 4), anime=(68, 2), oil_painting=(36, 1)),
    ):
        detection = detect(current, history)
        assert detection == Detection([], [], baseline_weeks=8)


def test_too_little_history_raises_nothing_and_says_so() -> None:
    detection = detect(volume(5000, 2500), [volume(100, 5)])

    assert detection == Detection([], ["only 1 week of history; anomaly detection needs 3"], baseline_weeks=1)


def test_empty_weeks_before_the_history_began_do_not_count_as_history() -> None:
    detection = detect(volume(5000), [Metrics(), Metrics(), volume(100), volume(90)])

    assert detection.anomalies == []
    assert detection.notes == ["only 2 weeks of history; anomaly detection needs 3"]
    assert detection.baseline_weeks == 2


def test_thresholds_can_be_loosened() -> None:
    history = [volume(n) for n in (10, 12, 11)]

    assert detect(volume(40), history).anomalies == []
    assert detect(volume(40), history, Thresholds(min_requests=5)).anomalies != []


def test_thresholds_refuse_a_spike_ratio_that_is_not_a_rise() -> None:
    with pytest.raises(ValueError, match="spike_ratio"):
        Thresholds(spike_ratio=1.0)


# --- the report document -----------------------------------------------------------------------


def test_the_report_document_has_every_field_design_md_lists() -> None:
    period = iso_week("2026-W47")
    metrics = volume(412, 20)

    document = report_document(
        period, metrics, detect(metrics, STEADY), generated_at=at("2026-11-23T00:00:01.5")
    )

    assert set(document) >= {
        "id",
        "totalRequests",
        "completedRequests",
        "failedRequests",
        "totalCreditsSpent",
        "totalCreditsRefunded",
        "successRate",
        "byModel",
        "byStyle",
        "bySize",
        "byColor",
        "uniqueUsers",
        "periodStart",
        "periodEnd",
        "generatedAt",
        "anomalies",
        "expectedAnomalies",
        "notes",
        "baselineWeeks",
    }
    assert document["id"] == "2026-W47"
    assert document["periodStart"] == "2026-11-16T00:00:00Z"
    assert document["periodEnd"] == "2026-11-23T00:00:00Z"
    assert document["generatedAt"] == "2026-11-23T00:00:01.500000Z"
    assert document["baselineWeeks"] == 8
    assert set(document["byStyle"]["realistic"]) == {
        "total",
        "completed",
        "failed",
        "failureRate",
        "creditsSpent",
        "creditsRefunded",
    }
    assert document["expectedAnomalies"] == []
    assert document["anomalies"]
    for anomaly in document["anomalies"]:
        assert set(anomaly) == {
            "kind",
            "metric",
            "dimension",
            "key",
            "observed",
            "expected",
            "lower",
            "upper",
            "score",
            "method",
            "severity",
            "since",
            "message",
            "history",
        }
