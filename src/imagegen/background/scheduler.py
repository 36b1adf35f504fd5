"""Runs the weekly report on a cron schedule (Monday 00:00 UTC by default), exactly once per period.

Every process with the scheduler role may fire; each period is claimed in the database first, so only
one of them reports it (a claim older than `STALE` whose process died is taken over). At start the
scheduler catches up the weeks it missed: every ISO week after the last scheduled one (or, on a new
database, after the first request, at most `report_catch_up_weeks` back) up to the last complete week.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

from croniter import croniter

from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.ports import Reports, Schedule
from imagegen.settings import Settings

log = logging.getLogger("imagegen.scheduler")
STALE = timedelta(minutes=10)
LONGEST_SLEEP = 30.0  # seconds: the clock is looked at again at least this often


class ScheduleStorage(Reports, Schedule, Protocol):
    """The periods' claims and the reports they run."""


async def run_scheduled(storage: ScheduleStorage, period: reports.Period, owner: str, now: datetime) -> bool:
    """Reports `period` unless another process has (or is doing it); True if this call did."""
    if not await storage.claim_scheduled_run(period.id, owner, now, now - STALE):
        return False
    await service.run_report(storage, period, now)
    await storage.finish_scheduled_run(period.id, now)
    log.info("scheduled report %s done", period.id)
    return True


async def missed_weeks(storage: ScheduleStorage, now: datetime, max_weeks: int) -> list[reports.Period]:
    last_complete = reports.previous_week(now)
    oldest_allowed = reports.week_of(last_complete.start - reports.WEEK * (max_weeks - 1))
    last_done = await storage.last_scheduled_run()
    if last_done is not None:
        first = reports.iso_week(last_done)
        first = reports.week_of(first.end)
    else:
        earliest = await storage.earliest_request_at()
        if earliest is None:
            return []
        first = reports.week_of(earliest)
    if first.start < oldest_allowed.start:
        first = oldest_allowed
    return reports.weeks_from(first, last_complete) if first.start <= last_complete.start else []


async def catch_up(storage: ScheduleStorage, now: datetime, owner: str, max_weeks: int) -> list[str]:
    done = []
    for period in await missed_weeks(storage, now, max_weeks):
        if await run_scheduled(storage, period, owner, now):
            done.append(period.id)
    return done


class Scheduler:
    def __init__(
        self, storage: ScheduleStorage, settings: Settings, clock: Callable[[], datetime] = utcnow
    ) -> None:
        if not croniter.is_valid(settings.report_cron):
            raise ValueError(f"IMAGEGEN_REPORT_CRON '{settings.report_cron}' is not a valid cron expression")
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self) -> None:
        """Catches up, then fires at every cron instant, until canceled."""
        await self._safely(
            catch_up(self.storage, self.clock(), self.owner, self.settings.report_catch_up_weeks)
        )
        schedule = croniter(self.settings.report_cron, self.clock())
        while True:
            fire_at: datetime = schedule.get_next(datetime)
            while (wait := (fire_at - self.clock()).total_seconds()) > 0:
                await asyncio.sleep(min(wait, LONGEST_SLEEP))
            await self._safely(self.fire(fire_at))

    async def fire(self, at: datetime) -> bool:
        return await run_scheduled(self.storage, reports.previous_week(at), self.owner, self.clock())

    async def _safely(self, action: Awaitable[object]) -> None:
        try:
            await action
        except Exception:
            log.exception("scheduled report failed; the next run or a restart will catch it up")
