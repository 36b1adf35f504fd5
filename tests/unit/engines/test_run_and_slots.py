"""The run context and the per-deployment concurrency limit."""

from __future__ import annotations

import threading
import time

from imagegen.engines import Run
from imagegen.engines.slots import Slots
from tests.unit.engines.fakes import FakeClock


def test_a_run_counts_down_to_its_deadline_and_an_attempt_never_outlives_it() -> None:
    clock = FakeClock()
    run = Run(10, clock=clock, sleep=clock.sleep)
    attempt = run.within(30)
    assert attempt.remaining() == 10 and run.within(4).remaining() == 4
    run.wait(25)
    assert clock.slept == [10] and run.expired and attempt.expired


def test_a_cancel_reaches_every_attempt_and_wakes_a_waiting_run_at_once() -> None:
    run = Run(60)
    attempt = run.within(30)
    threading.Timer(0.05, run.cancel).start()
    started = time.monotonic()
    attempt.wait(30)
    assert attempt.canceled and time.monotonic() - started < 5


def test_progress_is_reported_between_zero_and_one() -> None:
    seen: list[float] = []
    run = Run(1, on_progress=seen.append)
    for fraction in (-1, 0.5, 3):
        run.within(1).progress(fraction)
    assert seen == [0.0, 0.5, 1.0]


def test_a_deployment_runs_no_more_than_its_concurrency_at_once() -> None:
    slots, lock = Slots(), threading.Lock()
    running, most = [0], [0]

    def job() -> None:
        with slots.slot("gpu", 2, Run(10)) as got:
            assert got
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2 and slots.busy("gpu") == 0


def test_a_canceled_run_stops_waiting_for_a_slot() -> None:
    slots = Slots()
    with slots.slot("gpu", 1, Run(10)):
        waiting = Run(10)
        threading.Timer(0.05, waiting.cancel).start()
        with slots.slot("gpu", 1, waiting) as got:
            assert not got
    assert slots.busy("gpu") == 0
