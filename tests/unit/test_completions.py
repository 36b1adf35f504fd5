"""Completions: how a waiting create hears that its job ended."""

from __future__ import annotations

import asyncio
import time

from imagegen.background.completions import Completions


async def test_a_waiter_is_woken_when_its_job_finishes() -> None:
    completions = Completions()
    asyncio.get_running_loop().call_later(0.05, completions.finished, "r1")

    started = time.monotonic()
    assert await completions.wait("r1", timeout=5)
    assert time.monotonic() - started < 1


async def test_a_job_that_ended_before_its_waiter_came_returns_at_once() -> None:
    completions = Completions()
    completions.finished("r1")

    assert await completions.wait("r1", timeout=5)
    assert not await completions.wait("r2", timeout=0.01)


async def test_only_the_latest_finished_ids_are_remembered() -> None:
    completions = Completions(remembered=3)
    for n in range(5):
        completions.finished(f"r{n}")

    assert [await completions.wait(f"r{n}", 0.01) for n in range(5)] == [False, False, True, True, True]


async def test_a_waiter_that_timed_out_is_not_woken_later() -> None:
    completions = Completions()
    assert not await completions.wait("r1", timeout=0.01)

    completions.finished("r1")  # nobody left to wake: nothing raises
    assert await completions.wait("r1", timeout=0.01)
