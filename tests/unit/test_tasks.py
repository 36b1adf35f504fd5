"""The background lifecycle: tasks started by name, stopped together, a crash logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from imagegen.background.tasks import Tasks


async def test_stop_cancels_every_task_and_waits_for_their_cleanup() -> None:
    cleaned: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(name)

    tasks = Tasks()
    tasks.start("a", forever("a"))
    tasks.start("b", forever("b"))
    await asyncio.sleep(0)
    assert tasks.names == ["a", "b"]

    await tasks.stop()

    assert sorted(cleaned) == ["a", "b"]
    assert tasks.names == []


async def test_a_task_that_crashes_is_logged_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    async def crash() -> None:
        raise RuntimeError("boom")

    tasks = Tasks()
    with caplog.at_level(logging.ERROR, logger="imagegen.background"):
        tasks.start("imagegen-crashes", crash())
        await asyncio.sleep(0.01)

    assert "imagegen-crashes" in caplog.text and "boom" in caplog.text
    await tasks.stop()


async def test_a_task_that_ignores_its_cancel_does_not_hold_the_stop_past_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    tasks = Tasks()
    task = tasks.start("stubborn", stubborn())
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="imagegen.background"):
        await tasks.stop(timeout=0.1)

    assert "stubborn" in caplog.text
    release.set()
    task.cancel()
    await asyncio.sleep(0)
