"""Completions: how a waiting create hears that its job ended."""

from __future__ import annotations

import asyncio
import threading

from imagegen.completions import Completions


def test_a_waiter_is_woken_when_its_job_finishes_in_another_thread() -> None:
    async def scenario() -> None:
        completions = Completions()
        future = completions.register("r1")
        assert not future.done()
        threading.Thread(target=completions.finished, args=("r1",)).start()
        await asyncio.wait_for(future, 5)
        completions.unregister("r1", future)

    asyncio.run(scenario())


def test_a_job_that_ended_before_its_waiter_registered_wakes_it_at_once() -> None:
    async def scenario() -> None:
        completions = Completions()
        completions.finished("r1")
        assert completions.register("r1").done()
        assert not completions.register("r2").done()

    asyncio.run(scenario())


def test_only_the_latest_finished_ids_are_remembered() -> None:
    async def scenario() -> None:
        completions = Completions(remembered=3)
        for n in range(5):
            completions.finished(f"r{n}")
        assert [completions.register(f"r{n}").done() for n in range(5)] == [False, False, True, True, True]

    asyncio.run(scenario())


def test_unregistering_drops_the_waiter() -> None:
    async def scenario() -> None:
        completions = Completions()
        future = completions.register("r1")
        completions.unregister("r1", future)
        completions.finished("r1")
        await asyncio.sleep(0)
        assert not future.done()

    asyncio.run(scenario())
