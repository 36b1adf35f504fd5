"""Runs the weekly report on a cron schedule (Monday 00:00 UTC by default), exactly once per period.

Every process with the scheduler role may fire; each period is claimed in the database first, so only
one of them reports it (a claim older than `STALE` whose process died is taken over). At start the
scheduler catches up the weeks it missed: every ISO week after the last scheduled one (or, on a new
database, after the first request, at most `report_catch_up_weeks` back) up to the last complete week.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from croniter import croniter

from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.ports import Storage
from imagegen.settings import Settings

log = logging.getLogger("imagegen.scheduler")
STALE = timedelta(minutes=10)


def run_scheduled(storage: Storage, period: reports.Period, owner: str, now: datetime) -> bool:
    """Reports `period` unless another process has (or is doing it); True if this call did."""
    if not storage.claim_scheduled_run(period.id, owner, now, now - STALE):
        return False
    service.run_report(storage, period, now)
    storage.finish_scheduled_run(period.id, now)
    log.info("scheduled report %s done", period.id)
    return True


def missed_weeks(storage: Storage, now: datetime, max_weeks: int) -> list[reports.Period]:
    last_complete = reports.previous_week(now)
    oldest_allowed = reports.week_of(last_complete.start - reports.WEEK * (max_weeks - 1))
    last_done = storage.last_scheduled_run()
    if last_done is not None:
        first = reports.iso_week(last_done)
        first = reports.week_of(first.end)
    else:
        earliest = storage.earliest_request_at()
        if earliest is None:
            return []
        first = reports.week_of(earliest)
    if first.start < oldest_allowed.start:
        first = oldest_allowed
    return reports.weeks_from(first, last_complete) if first.start <= last_complete.start else []


def catch_up(storage: Storage, now: datetime, owner: str, max_weeks: int) -> list[str]:
    return [p.id for p in missed_weeks(storage, now, max_weeks) if run_scheduled(storage, p, owner, now)]


class Scheduler:
    def __init__(self, storage: Storage, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        if not croniter.is_valid(settings.report_cron):
            raise ValueError(f"IMAGEGEN_REPORT_CRON '{settings.report_cron}' is not a valid cron expression")
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="imagegen-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        self._safely(
            lambda: catch_up(self.storage, self.clock(), self.owner, self.settings.report_catch_up_weeks)
        )
        schedule = croniter(self.settings.report_cron, self.clock())
        while True:
            fire_at: datetime = schedule.get_next(datetime)
            while (wait := (fire_at - self.clock()).total_seconds()) > 0:
                if self._stop.wait(min(wait, 30.0)):
                    return
            self._safely(functools.partial(self.fire, fire_at))

    def fire(self, at: datetime) -> bool:
        return run_scheduled(self.storage, reports.previous_week(at), self.owner, self.clock())

    def _safely(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:
            log.exception("scheduled report failed; the next run or a restart will catch it up")
