"""The workers: how idle ones wait for jobs (woken by a signal, never spinning on a backlog), and a
job run to its image."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from imagegen import service
from imagegen.background.completions import Completions
from imagegen.background.engines import JobEngines
from imagegen.background.signal import JobSignal
from imagegen.background.tasks import Tasks
from imagegen.background.workers import WorkerPool
from imagegen.clock import utcnow
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.engines.registry import Registry
from imagegen.ports import Lease
from imagegen.settings import Settings
from imagegen.storage.folder_images import FolderImageStore
from imagegen.storage.memory import MemoryStorage
from tests.integration.builders import BODY, T0


async def test_a_wait_returns_at_once_when_a_job_was_signalled_since_the_count_was_noted() -> None:
    signal = JobSignal()
    seen = signal.count
    signal.enqueued()

    started = time.monotonic()
    await signal.wait(seen, timeout=5)

    assert time.monotonic() - started < 1


async def test_a_wait_sleeps_until_the_next_signal() -> None:
    signal = JobSignal()
    seen = signal.count
    asyncio.get_running_loop().call_later(0.2, signal.enqueued)

    started = time.monotonic()
    await signal.wait(seen, timeout=5)

    assert 0.15 < time.monotonic() - started < 2


async def test_one_signal_wakes_one_sleeper_and_wake_all_wakes_every_one() -> None:
    signal = JobSignal()
    seen = signal.count
    sleepers = [asyncio.create_task(signal.wait(seen, timeout=5)) for _ in range(3)]
    await asyncio.sleep(0.01)

    signal.enqueued()
    await asyncio.sleep(0.01)
    assert sum(s.done() for s in sleepers) == 1

    signal.wake_all()
    await asyncio.wait_for(asyncio.gather(*sleepers), 1)


async def test_signals_raised_while_every_worker_was_busy_are_not_a_backlog() -> None:
    signal = JobSignal()
    for _ in range(1000):
        signal.enqueued()
    seen = signal.count  # a worker looked after all of them and found nothing

    started = time.monotonic()
    await signal.wait(seen, timeout=0.3)

    assert time.monotonic() - started >= 0.25


def engines(failure_rate: float | None = None, latency_ms: int | None = None) -> JobEngines:
    return JobEngines(Registry.discover(), failure_rate=failure_rate, latency_ms=latency_ms)


class CountedClaims(MemoryStorage):
    """The in-memory storage, counting how often a job is looked for."""

    claims = 0

    async def claim_job(self, lease: Lease, now: object, models: object = None) -> GenerationRequest | None:  # type: ignore[override]
        self.claims += 1
        return await super().claim_job(lease, now, models)  # type: ignore[arg-type]


async def test_idle_workers_look_once_per_signal_burst_then_wait_for_the_polling_interval() -> None:
    storage, signal = CountedClaims(), JobSignal()
    await service.first_start(storage, T0)
    for _ in range(5000):  # a burst of creates, all of it claimed by workers elsewhere
        signal.enqueued()
    settings = Settings(workers=2, poll_interval_seconds=0.5)
    pool = WorkerPool(storage, engines(), None, settings, signal)  # type: ignore[arg-type]
    tasks = Tasks()

    pool.start(tasks)
    await asyncio.sleep(1.2)
    await tasks.stop()

    # Each worker looks at start, then every 0.5 s: about 6 claims, never thousands.
    assert 2 <= storage.claims <= 12


async def test_a_worker_runs_a_queued_job_to_its_image_and_reports_its_end(tmp_path: Path) -> None:
    storage, signal, completions = MemoryStorage(), JobSignal(), Completions()
    await service.first_start(storage, T0)
    request, _ = await service.create_generation(
        storage, BODY, service.CreateRules(max_prompt_length=100), now=utcnow()
    )
    images = FolderImageStore(tmp_path)
    settings = Settings(workers=1, poll_interval_seconds=5, data_dir=tmp_path)
    pool = WorkerPool(
        storage, engines(failure_rate=0, latency_ms=0), images, settings, signal, completions.finished
    )
    tasks = Tasks()

    pool.start(tasks)
    signal.enqueued()
    try:
        assert await completions.wait(request.id, timeout=10)
    finally:
        await tasks.stop()

    done = await storage.get_request(request.id)
    assert done is not None and done.status is Status.COMPLETED
    assert (await images.open(request.id) or b"").startswith(b"\x89PNG")


async def test_a_worker_stopped_during_a_job_finishes_it_first(tmp_path: Path) -> None:
    storage, signal = MemoryStorage(), JobSignal()
    await service.first_start(storage, T0)
    request, _ = await service.create_generation(
        storage, BODY, service.CreateRules(max_prompt_length=100), now=utcnow()
    )
    settings = Settings(workers=1, poll_interval_seconds=5, data_dir=tmp_path)
    pool = WorkerPool(
        storage, engines(failure_rate=0, latency_ms=300), FolderImageStore(tmp_path), settings, signal
    )
    tasks = Tasks()
    pool.start(tasks)
    await asyncio.sleep(0.1)  # the worker is drawing

    await tasks.stop()

    done = await storage.get_request(request.id)
    assert done is not None and done.status is Status.COMPLETED
