"""Routing with fallbacks, driven by a fake clock: nothing here sleeps for real."""

from __future__ import annotations

import random

import pytest

from imagegen.engines import EngineError, Failure, GenerationCanceled, Run
from imagegen.engines.health import CooldownPolicy, Health
from imagegen.engines.routing import RetryPolicy, Router
from imagegen.engines.slots import Slots
from tests.unit.engines.fakes import REQUEST, Engines, FakeClock, boom, deployment, png

NO_JITTER = RetryPolicy(retries=2, backoff_s=1.0, max_backoff_s=10.0, jitter=0.0)


def router(clock: FakeClock, engines: Engines, names: list[str], **options: object) -> Router:
    health = options.pop("health", None) or Health(CooldownPolicy(failures=3, seconds=60), clock=clock)
    policy = options.pop("policy", NO_JITTER)
    return Router(
        [deployment(n) for n in names],
        engines,
        health=health,  # type: ignore[arg-type]
        slots=Slots(),
        policy=policy,  # type: ignore[arg-type]
        rng=random.Random(0),
    )


def run_on(clock: FakeClock, timeout: float = 300.0) -> Run:
    return Run(timeout, clock=clock, sleep=clock.sleep)


def test_a_transient_failure_is_retried_on_the_same_deployment_after_a_back_off() -> None:
    clock = FakeClock()
    engines = Engines(clock, {"a": [boom(), boom(), png()]})
    assert router(clock, engines, ["a"]).generate(REQUEST, run_on(clock)).startswith(b"\x89PNG")
    assert clock.slept == [1.0, 2.0]  # doubled each retry
    assert len(engines.by_name["a"].calls) == 3


def test_retry_after_from_the_engine_is_honoured_when_longer_than_the_back_off() -> None:
    clock = FakeClock()
    engines = Engines(clock, {"a": [boom(retry_after=7.5), png()]})
    router(clock, engines, ["a"]).generate(REQUEST, run_on(clock))
    assert clock.slept == [7.5]


def test_a_retry_after_longer_than_the_longest_back_off_cools_the_deployment_and_moves_on() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    engines = Engines(clock, {"a": [boom(retry_after=120)], "b": [png()]})
    router(clock, engines, ["a", "b"], health=health).generate(REQUEST, run_on(clock))
    assert clock.slept == []
    assert len(engines.by_name["a"].calls) == 1 and len(engines.by_name["b"].calls) == 1
    assert health.cooling_until(deployment("a").key) == pytest.approx(clock.now + 120)


def test_after_its_retries_the_next_deployment_is_tried() -> None:
    clock = FakeClock()
    engines = Engines(clock, {"a": [boom()], "b": [png(color="red")]})
    image = router(clock, engines, ["a", "b"]).generate(REQUEST, run_on(clock))
    assert image == png(color="red")
    assert len(engines.by_name["a"].calls) == 3


def test_a_permanent_failure_ends_at_once_without_trying_other_deployments() -> None:
    clock = FakeClock()
    engines = Engines(
        clock, {"a": [boom("the prompt was refused: unsafe", failure=Failure.PERMANENT)], "b": [png()]}
    )
    with pytest.raises(EngineError) as caught:
        router(clock, engines, ["a", "b"]).generate(REQUEST, run_on(clock))
    assert caught.value.failure is Failure.PERMANENT
    assert caught.value.message == "the prompt was refused: unsafe"
    assert engines.by_name["b"].calls == [] and clock.slept == []


def test_a_deployment_failure_moves_to_the_next_deployment_without_retrying_and_cools_it() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    engines = Engines(clock, {"a": [boom("bad key", failure=Failure.DEPLOYMENT)], "b": [png()]})
    router(clock, engines, ["a", "b"], health=health).generate(REQUEST, run_on(clock))
    assert len(engines.by_name["a"].calls) == 1
    assert health.cooling_until(deployment("a").key) is not None


def test_when_every_deployment_fails_the_last_reason_is_kept_with_the_attempt_count() -> None:
    clock = FakeClock()
    engines = Engines(clock, {"a": [boom("a is down")], "b": [boom("b is down")]})
    with pytest.raises(EngineError) as caught:
        router(clock, engines, ["a", "b"]).generate(REQUEST, run_on(clock))
    assert caught.value.message == "b is down (after 6 attempts)"
    assert caught.value.transient


def test_a_deployment_that_keeps_failing_is_cooled_down_and_skipped_by_the_next_job() -> None:
    clock = FakeClock()
    health = Health(CooldownPolicy(failures=3, seconds=60), clock=clock)
    engines = Engines(clock, {"a": [boom()], "b": [png()]})
    route = router(clock, engines, ["a", "b"], health=health)
    route.generate(REQUEST, run_on(clock))  # a fails 3 times: cooled
    calls_on_a = len(engines.by_name["a"].calls)
    route.generate(REQUEST, run_on(clock))
    assert len(engines.by_name["a"].calls) == calls_on_a  # skipped while cooling
    clock.now += 61
    route.generate(REQUEST, run_on(clock))
    assert len(engines.by_name["a"].calls) == calls_on_a + 3  # tried again once it has cooled


def test_when_every_deployment_is_cooling_the_first_to_recover_is_waited_for() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    health.cool(deployment("a").key, 30)
    health.cool(deployment("b").key, 10)
    engines = Engines(clock, {"a": [png()], "b": [png(color="red")]})
    image = router(clock, engines, ["a", "b"], health=health).generate(REQUEST, run_on(clock))
    assert image == png(color="red") and clock.slept == [10.0]


def test_a_cool_down_outlasting_the_deadline_fails_at_once() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    health.cool(deployment("a").key, 600)
    engines = Engines(clock, {"a": [png()]})
    with pytest.raises(EngineError, match="every deployment is cooling down") as caught:
        router(clock, engines, ["a"], health=health).generate(REQUEST, run_on(clock, timeout=60))
    assert caught.value.transient and clock.slept == []


def test_the_overall_deadline_stops_the_retries() -> None:
    clock = FakeClock()
    engines = Engines(clock, {"a": [boom()], "b": [boom()]})
    engines.by_name["a"].latency = 4.0
    with pytest.raises(EngineError) as caught:
        router(clock, engines, ["a", "b"]).generate(REQUEST, run_on(clock, timeout=6))
    # a: fails at 4 s, waits 1 s, fails again at 9 s > 6 s: no wait, no b.
    assert len(engines.by_name["a"].calls) == 2 and engines.by_name["b"].calls == []
    assert "timed out after 2 attempts" in caught.value.message


def test_each_attempt_gets_the_deployments_timeout_within_the_overall_deadline() -> None:
    clock = FakeClock()
    seen: list[float] = []

    class Recording:
        def generate(self, request, run):  # type: ignore[no-untyped-def]
            seen.append(run.remaining())
            return png()

        def close(self) -> None:
            pass

    route = Router(
        [deployment("a", timeout_s=20)], lambda d: Recording(), health=Health(clock=clock), slots=Slots()
    )
    route.generate(REQUEST, run_on(clock, timeout=300))
    route.generate(REQUEST, run_on(clock, timeout=5))
    assert seen == [20.0, 5.0]


def test_a_canceled_run_is_not_retried_and_its_late_result_is_discarded() -> None:
    clock = FakeClock()
    run = run_on(clock)

    class CanceledWhileRunning:
        calls = 0

        def generate(self, request, run_):  # type: ignore[no-untyped-def]
            CanceledWhileRunning.calls += 1
            run.cancel()  # the user cancels while the engine works; the image still arrives
            return png()

        def close(self) -> None:
            pass

    route = Router(
        [deployment("a"), deployment("b")], lambda d: CanceledWhileRunning(), health=Health(), slots=Slots()
    )
    with pytest.raises(GenerationCanceled):
        route.generate(REQUEST, run)
    assert CanceledWhileRunning.calls == 1


def test_an_engine_that_raises_something_else_is_a_deployment_failure_with_no_details() -> None:
    clock = FakeClock()
    engines = Engines(clock, {"a": [KeyError("secret internals")], "b": [png()]})
    router(clock, engines, ["a", "b"]).generate(REQUEST, run_on(clock))
    engines = Engines(clock, {"a": [KeyError("secret internals")]})
    with pytest.raises(EngineError) as caught:
        router(clock, engines, ["a"]).generate(REQUEST, run_on(clock))
    assert caught.value.failure is Failure.DEPLOYMENT
    assert caught.value.message == "engine 'scripted' failed: internal error (KeyError)"


def test_an_answer_that_is_not_an_image_fails_over_to_the_next_deployment() -> None:
    clock = FakeClock()
    engines = Engines(clock, {"a": [b"<html>oops</html>"], "b": [png()]})
    assert router(clock, engines, ["a", "b"]).generate(REQUEST, run_on(clock)) == png()
    assert len(engines.by_name["a"].calls) == 1


def test_an_image_of_another_size_is_refused_unless_the_deployment_resizes() -> None:
    clock = FakeClock()
    engines = Engines(clock, {"a": [png((1024, 1024))]})
    with pytest.raises(EngineError, match="returned a 1024x1024 image for a 512x512 request"):
        router(clock, engines, ["a"]).generate(REQUEST, run_on(clock))


def test_jitter_spreads_the_back_off_within_its_bounds() -> None:
    policy = RetryPolicy(backoff_s=1.0, jitter=0.2)
    waits = [policy.backoff(0, None, random.Random(seed)) for seed in range(50)]
    assert all(0.8 <= w <= 1.2 for w in waits) and len(set(waits)) > 1
