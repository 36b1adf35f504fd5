"""The weekly report schedule: catch-up of missed weeks, exactly once across processes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from imagegen import service
from imagegen.background import scheduler
from imagegen.domain import reports
from imagegen.ports import Storage
from imagegen.settings import Settings
from imagegen.storage.sql.adapter import SqlStorage

NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)  # a Thursday in 2026-W48


async def history(storage: Storage, weeks: list[str], per_week: int = 3) -> None:
    records = []
    for week in weeks:
        start = reports.iso_week(week).start
        for n in range(per_week):
            records.append(
                {
                    "collection": "generationRequests",
                    "id": f"{week}-{n}",
                    "user_id": "testUser1",
                    "model": "model-a",
                    "style": "anime",
                    "color": "vibrant",
                    "size": "512x512",
                    "prompt": "",
                    "status": "completed",
                    "cost": 1,
                    "created_at": start + timedelta(hours=10 + n),
                }
            )
    await storage.import_records(records, NOW)


async def test_missed_weeks_are_caught_up_once_each_from_the_first_request(storage: Storage) -> None:
    await history(storage, ["2026-W44", "2026-W46"])
    done = await scheduler.catch_up(storage, NOW, "p1", max_weeks=52)
    assert done == ["2026-W44", "2026-W45", "2026-W46", "2026-W47"]
    assert (await storage.get_report("2026-W44"))["totalRequests"] == 3  # type: ignore[index]
    assert (await storage.get_report("2026-W45"))["totalRequests"] == 0  # type: ignore[index]
    assert await scheduler.catch_up(storage, NOW, "p2", max_weeks=52) == []


async def test_catch_up_resumes_after_the_last_scheduled_week(storage: Storage) -> None:
    await history(storage, ["2026-W40"])
    await scheduler.catch_up(storage, NOW - timedelta(weeks=3), "p1", max_weeks=52)
    assert await storage.last_scheduled_run() == "2026-W44"
    assert await scheduler.catch_up(storage, NOW, "p1", max_weeks=52) == ["2026-W45", "2026-W46", "2026-W47"]


async def test_catch_up_goes_back_at_most_the_configured_number_of_weeks(storage: Storage) -> None:
    await history(storage, ["2025-W10"])
    assert await scheduler.catch_up(storage, NOW, "p1", max_weeks=2) == ["2026-W46", "2026-W47"]


async def test_a_new_database_without_requests_has_nothing_to_catch_up(storage: Storage) -> None:
    assert await scheduler.catch_up(storage, NOW, "p1", max_weeks=52) == []


async def test_concurrent_schedulers_report_a_period_exactly_once(database_url: str) -> None:
    stores = [SqlStorage(database_url) for _ in range(4)]
    await stores[0].migrate()
    await history(stores[0], ["2026-W47"])
    period = reports.iso_week("2026-W47")

    results = await asyncio.gather(
        *(scheduler.run_scheduled(store, period, f"process-{n}", NOW) for n, store in enumerate(stores))
    )

    for store in stores:
        await store.close()
    assert sorted(results) == [False, False, False, True]


async def test_a_claim_whose_process_died_is_taken_over_after_it_goes_stale(storage: Storage) -> None:
    period = reports.iso_week("2026-W47")
    assert await storage.claim_scheduled_run(period.id, "dead", NOW, NOW - scheduler.STALE)
    assert not await scheduler.run_scheduled(storage, period, "alive", NOW + timedelta(minutes=1))
    assert await scheduler.run_scheduled(
        storage, period, "alive", NOW + scheduler.STALE + timedelta(seconds=1)
    )
    assert await storage.get_report(period.id) is not None


async def test_the_scheduler_fires_for_the_previous_iso_week_on_a_controllable_clock(
    storage: Storage,
) -> None:
    await history(storage, ["2026-W47"])
    clock = [datetime(2026, 11, 30, 0, 0, tzinfo=UTC)]  # Monday 00:00 of 2026-W49
    job = scheduler.Scheduler(storage, Settings(), clock=lambda: clock[0])
    assert await job.fire(clock[0])
    assert await storage.get_report("2026-W48") is not None
    assert not await job.fire(clock[0])  # the same period again: already reported


async def test_an_invalid_cron_expression_refuses_to_start(storage: Storage) -> None:
    with pytest.raises(ValueError, match="not a valid cron"):
        scheduler.Scheduler(storage, Settings(report_cron="every monday"))


async def test_generation_times_are_reported_per_model_from_a_histogram(storage: Storage) -> None:
    start = reports.iso_week("2026-W47").start
    records = [
        {
            "collection": "generationRequests",
            "id": f"t{n}",
            "user_id": "testUser1",
            "model": "model-b",
            "style": "anime",
            "color": "vibrant",
            "size": "512x512",
            "prompt": "",
            "status": "completed",
            "cost": 1,
            "created_at": start + timedelta(hours=1),
            "started_at": start + timedelta(hours=1),
            "completed_at": start + timedelta(hours=1, milliseconds=100 * (n + 1)),
        }
        for n in range(20)
    ]
    await storage.import_records(records, NOW)
    document = await service.run_report(storage, reports.iso_week("2026-W47"), NOW)
    times = document["generationTimeMs"]["model-b"]
    assert abs(times["p50"] - 1000) <= 100 and abs(times["p95"] - 1900) <= 100
