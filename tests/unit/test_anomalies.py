"""The anomaly detector on hand-built weeks: what it must find, what it must not, how it explains.

Each week is built from shares and failure rates (`traffic`), so that a test says in numbers what
moved; `wobble` gives the ordinary week-to-week noise a real history has.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import product

import pytest

from imagegen.domain.reports import (
    Anomaly,
    GroupCount,
    Metrics,
    Thresholds,
    detect,
    mark,
    marks_in,
    summarize,
)

PRICES = {"512x512": 1, "1024x1024": 3, "1024x1792": 4}
SIZES = {"512x512": 0.5, "1024x1024": 0.35, "1024x1792": 0.15}
MODELS = {"model-a": 0.6, "model-b": 0.4}
STYLES = {"realistic": 0.4, "anime": 0.35, "sketch": 0.25}
COLORS = {"vibrant": 0.5, "pastel": 0.5}

# Ordinary weeks: volume and failure wobble a little, the mix a little less.
VOLUME_WOBBLE = [1.00, 1.06, 0.95, 1.03, 0.97, 1.08, 0.94, 1.02, 0.99, 1.05, 0.96, 1.01]
FAILURE_WOBBLE = [0.0, 0.4, -0.3, 0.2, -0.4, 0.3, -0.2, 0.1, 0.4, -0.1, -0.3, 0.2]
SHARE_WOBBLE = [0.0, 0.6, -0.5, 0.3, -0.4, 0.5, -0.2, 0.1, 0.4, -0.6, 0.2, -0.1]


def traffic(
    n: int = 4000,
    failure: float = 5.0,
    *,
    sizes: Mapping[str, float] = SIZES,
    models: Mapping[str, float] = MODELS,
    styles: Mapping[str, float] = STYLES,
    failing: Mapping[tuple[str, str], float] | None = None,
    prices: Mapping[str, float] = PRICES,
) -> Metrics:
    """A week of `n` requests whose model, style, size and color are drawn independently from the
    shares; every request fails with `failure` percent, or `failing[(dimension, key)]` for a key."""
    rows, carry = [], 0.0  # failures carried from combination to combination: totals stay exact
    for (model, m), (style, s), (size, z), (color, c) in product(
        models.items(), styles.items(), sizes.items(), COLORS.items()
    ):
        count = round(n * m * s * z * c)
        rate = failure
        for (dimension, key), override in (failing or {}).items():
            if {"model": model, "style": style, "size": size, "color": color}[dimension] == key:
                rate = override
        carry += count * rate / 100
        failed = min(count, int(carry))
        carry -= failed
        price = prices[size]
        rows.append(
            GroupCount(
                model, style, color, size, "completed", count - failed, round((count - failed) * price)
            )
        )
        rows.append(GroupCount(model, style, color, size, "failed", failed, round(failed * price)))
    return summarize([r for r in rows if r.count], unique_users=max(1, n // 5))


def ordinary(weeks: int = 12, n: int = 4000, failure: float = 5.0, **kwargs: object) -> list[Metrics]:
    """`weeks` ordinary weeks, oldest first."""
    return [
        traffic(round(n * VOLUME_WOBBLE[i % 12]), failure + FAILURE_WOBBLE[i % 12], **kwargs)  # type: ignore[arg-type]
        for i in range(weeks)
    ]


def moved(shares: Mapping[str, float], key: str, points: float) -> dict[str, float]:
    """The shares with `key` `points` higher, the others scaled to make room."""
    target = shares[key] + points / 100
    scale = (1 - target) / (1 - shares[key])
    return {k: target if k == key else v * scale for k, v in shares.items()}


def findings(
    current: Metrics, history: list[Metrics], **kwargs: object
) -> list[tuple[str, str, str | None, str | None]]:
    return [(a.kind, a.metric, a.dimension, a.key) for a in detect(current, history, **kwargs).anomalies]  # type: ignore[arg-type]


IDS = [f"2026-W{n:02d}" for n in range(1, 14)]  # twelve weeks of history, then the period


# --- ordinary weeks ----------------------------------------------------------------------------


def test_ordinary_weeks_raise_nothing() -> None:
    history = ordinary(12)
    for current in (traffic(4100, 5.3), traffic(3800, 4.7)):
        assert detect(current, history).anomalies == []


def test_a_seasonal_rise_of_a_third_over_a_few_weeks_is_not_a_spike() -> None:
    season = [round(4000 * (1 + 0.3 * i / 6)) for i in range(12)]
    history = [traffic(min(n, 5200)) for n in season]

    assert findings(traffic(5600), history) == []


# --- spend and mix -----------------------------------------------------------------------------


def test_a_spend_spike_driven_by_the_mix_says_which_size_moved() -> None:
    history = ordinary(12)
    dearer = traffic(4000, sizes=moved(SIZES, "1024x1792", 30))  # same requests, dearer sizes

    detection = detect(dearer, history)

    spend = next(a for a in detection.anomalies if a.metric == "creditsPerRequest")
    assert spend.kind == "credit_shift"
    assert spend.observed > 1.3 * spend.expected
    assert spend.lower is not None and spend.upper is not None and spend.observed > spend.upper
    assert "the size mix moved (1024x1792 45% of completed requests vs 15%" in spend.message
    assert "with requests at 1.0x" in spend.message
    assert not any(a.metric == "totalRequests" for a in detection.anomalies)


def test_the_share_shift_names_the_key_that_moved_and_where_it_came_from() -> None:
    history = ordinary(12)
    current = traffic(4000, styles=moved(STYLES, "sketch", 20))

    detection = detect(current, history)

    assert [(a.kind, a.dimension, a.key) for a in detection.anomalies] == [("share_shift", "style", "sketch")]
    share = detection.anomalies[0]
    assert (share.observed, share.expected) == (pytest.approx(45.0, abs=0.2), pytest.approx(25.0, abs=0.2))
    assert share.message.startswith("Share of style 'sketch' 45.0% of its requests vs 25.0% (+20.0 points)")
    assert "; from realistic 29.3% vs 40.0%, anime 25.7% vs 35.0%" in share.message


def test_a_price_change_at_the_same_mix_is_a_credit_shift_that_says_so() -> None:
    history = ordinary(12)
    current = traffic(4000, prices={**PRICES, "1024x1024": 4})

    spend = next(a for a in detect(current, history).anomalies if a.metric == "creditsPerRequest")

    assert "at about the same mix (1024x1024 4 credits a request vs 3" in spend.message


def test_a_size_that_fails_more_does_not_change_the_spend() -> None:
    # Fewer dear requests complete, so credits per completed request fall; nobody pays less.
    history = ordinary(12)
    current = traffic(4000, failing={("size", "1024x1792"): 45.0})

    assert findings(current, history) == [("failure_rate_jump", "failureRate", "size", "1024x1792")]


def test_a_new_dearer_size_ramping_up_moves_neither_the_spend_nor_the_shares() -> None:
    history = ordinary(9)
    prices = {**PRICES, "2048x2048": 8}
    for share in (0.04, 0.08, 0.12):
        sizes = {k: v * (1 - share) for k, v in SIZES.items()} | {"2048x2048": share}
        history.append(traffic(4000, sizes=sizes, prices=prices))
    sizes = {k: v * 0.82 for k, v in SIZES.items()} | {"2048x2048": 0.18}

    assert findings(traffic(4000, sizes=sizes, prices=prices), history) == []


def test_a_rare_key_is_not_judged_on_its_share() -> None:
    styles = {"realistic": 0.395, "anime": 0.35, "sketch": 0.25, "pixel art": 0.005}
    history = ordinary(12, styles=styles)
    burst = {"realistic": 0.385, "anime": 0.35, "sketch": 0.25, "pixel art": 0.015}  # tripled

    assert findings(traffic(4000, styles=burst), history) == []


# --- volume ------------------------------------------------------------------------------------


def test_a_spike_is_judged_against_the_recent_level_and_says_so() -> None:
    detection = detect(traffic(16000), ordinary(12))

    assert [(a.kind, a.metric) for a in detection.anomalies] == [("spike", "totalRequests")]
    spike = detection.anomalies[0]
    assert spike.severity == "critical"  # past the case study's 3x, and far outside a calm history
    assert spike.message.startswith(
        "Requests 4.0x their level (16000 vs 4038, the median of the last 3 weeks)"
    )
    assert "credits spent moved with them (4.0x their level)" in spike.message  # one finding, not two


def test_the_week_after_a_spike_is_not_a_drop() -> None:
    history = [*ordinary(11), traffic(16000)]

    assert findings(traffic(4000), history) == []


def test_a_level_shift_in_requests_says_since_when() -> None:
    history = [*ordinary(9), traffic(10000), traffic(10400), traffic(9800)]

    detection = detect(traffic(10200), history, week_ids=IDS)

    shift = next(a for a in detection.anomalies if a.metric == "totalRequests")
    assert (shift.kind, shift.since) == ("level_shift", "2026-W10")
    assert "stepped up to 2.5x their earlier level for 4 weeks (since 2026-W10)" in shift.message


# --- failures ----------------------------------------------------------------------------------


def test_a_slow_drift_is_found_and_says_since_when_it_has_been_building() -> None:
    # +2 points a week on one size: after four weeks the 8-week median has climbed with it.
    history = ordinary(8)
    for step in range(1, 5):
        history.append(traffic(4000, failing={("size", "1024x1024"): 5 + 2 * step}))
    current = traffic(4000, failing={("size", "1024x1024"): 15.0})

    detection = detect(current, history, week_ids=IDS)

    assert [(a.kind, a.dimension, a.key) for a in detection.anomalies] == [("drift", "size", "1024x1024")]
    drift = detection.anomalies[0]
    assert drift.since == "2026-W09"
    assert drift.expected == pytest.approx(5.0, abs=0.5)
    assert "has been rising for 5 weeks (since 2026-W09)" in drift.message
    assert len(drift.history) == 13 and drift.history[-1] == pytest.approx(15.0, abs=0.2)


def test_one_failing_style_is_one_finding_not_a_cascade() -> None:
    history = ordinary(12)
    current = traffic(4000, failing={("style", "anime"): 35.0})  # the success rate falls 10 points

    detection = detect(current, history)

    assert [(a.kind, a.dimension, a.key) for a in detection.anomalies] == [
        ("failure_rate_jump", "style", "anime")
    ]
    assert "with it the overall success rate fell to" in detection.anomalies[0].message


def test_a_surge_everywhere_is_the_success_rate_alone() -> None:
    detection = detect(traffic(4000, 25.0), ordinary(12))

    assert [(a.kind, a.metric) for a in detection.anomalies] == [("success_rate_drop", "successRate")]
    drop = detection.anomalies[0]
    assert drop.lower is not None and drop.observed < drop.lower and drop.upper is None


def test_traffic_moving_to_a_model_that_always_fails_more_reports_the_model_not_the_total() -> None:
    failing = {("model", "model-b"): 16.0}  # overall 9.4 % failed before, 14.4 % now
    history = ordinary(12, failing=failing)
    current = traffic(4000, models={"model-a": 0.15, "model-b": 0.85}, failing=failing)

    detection = detect(current, history)

    assert [(a.kind, a.dimension, a.key) for a in detection.anomalies] == [
        ("share_shift", "model", "model-b")
    ]
    assert "although no model failed more than usual" in detection.anomalies[0].message


def test_a_new_style_is_judged_against_all_requests_until_it_has_its_own_history() -> None:
    history = ordinary(12)
    styles = {"realistic": 0.36, "anime": 0.32, "sketch": 0.22, "ukiyo-e": 0.10}

    assert findings(traffic(4000, styles=styles), history) == []
    failing = findings(traffic(4000, styles=styles, failing={("style", "ukiyo-e"): 40.0}), history)
    assert failing == [("failure_rate_jump", "failureRate", "style", "ukiyo-e")]


def test_a_small_key_failing_by_chance_is_not_an_alarm() -> None:
    styles = {"realistic": 0.39, "anime": 0.35, "sketch": 0.25, "pixel art": 0.01}  # 40 requests
    history = ordinary(12, styles=styles)

    assert findings(traffic(4000, styles=styles, failing={("style", "pixel art"): 20.0}), history) == []


# --- explained findings ------------------------------------------------------------------------


def test_every_finding_carries_its_band_method_and_history() -> None:
    detection = detect(traffic(4000, failing={("style", "anime"): 30.0}), ordinary(12), week_ids=IDS)

    jump = detection.anomalies[0].to_dict()
    assert set(jump) == {
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
    assert jump["lower"] is None and jump["expected"] < jump["upper"] < jump["observed"]
    assert jump["method"].startswith("robust z of its gap to the rest of the period")
    assert Anomaly.from_dict(jump) == detection.anomalies[0]


# --- operators' marks --------------------------------------------------------------------------


def _marked_week() -> tuple[list[Metrics], dict[str, object]]:
    """A report (week 13) whose sketch share shift an operator marked expected."""
    history = ordinary(12)
    current = traffic(4000, styles=moved(STYLES, "sketch", 20))
    detection = detect(current, history, week_ids=IDS)
    marked = mark(detection.anomalies[0], "2026-W13", "2026-03-30T09:00:00Z", "a campaign for sketches")
    return [*history[1:], current], {"anomalies": [marked.to_dict()], "expectedAnomalies": []}


def test_a_marked_pattern_is_not_alarmed_the_next_week_unless_it_grows() -> None:
    history, document = _marked_week()
    ids = [*IDS[1:], "2026-W14"]

    same = detect(
        traffic(4000, styles=moved(STYLES, "sketch", 21)),
        history,
        marks_made=marks_in(document),
        week_ids=ids,
    )
    grown = detect(
        traffic(4000, styles=moved(STYLES, "sketch", 32)),
        history,
        marks_made=marks_in(document),
        week_ids=ids,
    )

    assert same.anomalies == []
    assert [(a.key, a.mark.report_id if a.mark else None) for a in same.expected] == [("sketch", "2026-W13")]
    assert [a.key for a in grown.anomalies] == ["sketch"]
    assert "grown beyond the pattern marked expected in 2026-W13" in grown.anomalies[0].message


def test_a_mark_stays_on_its_own_report_when_the_report_is_run_again() -> None:
    _, document = _marked_week()
    current = traffic(4000, styles=moved(STYLES, "sketch", 20))

    again = detect(current, ordinary(12), marks_made=marks_in(document), week_ids=IDS)

    assert [a.mark.note if a.mark else None for a in again.anomalies] == ["a campaign for sketches"]
    assert again.expected == []


def test_thresholds_refuse_a_non_positive_z_score() -> None:
    with pytest.raises(ValueError, match="z-scores"):
        Thresholds(sustained_z=0)
