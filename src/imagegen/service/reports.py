"""Weekly reports: a period aggregated in the database, compared with the weeks before, stored;
the operators' marks on findings; the stored reports read back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from imagegen.domain import reports
from imagegen.domain.errors import InvalidInput, NotFound
from imagegen.domain.generation import ID_RULE, valid_id
from imagegen.domain.paging import Page
from imagegen.ports import Reports
from imagegen.service.checks import check_cursor

BASELINE_WEEKS = 12  # the recent 8 weeks for one-week rules, and older reference weeks for drifts
REPORT_SCANS = 3  # the period's three aggregations at once; the baseline weeks queue behind them
REPORT_YEARS = (1971, 9998)  # room for the 12-week baseline before, and the period's end after
T = TypeVar("T")


async def run_report(
    storage: Reports,
    period: reports.Period,
    now: datetime,
    *,
    thresholds: reports.Thresholds | None = None,
    baseline_weeks: int = BASELINE_WEEKS,
) -> dict[str, Any]:
    """Aggregates the period in the database, compares it with the preceding weeks, stores it.

    The aggregations are independent scans: they are awaited side by side, at most REPORT_SCANS at
    a time (the database works on them in parallel). The comparison, pure computation, runs on a
    thread so that the event loop keeps serving meanwhile. The numbers depend on the requests alone
    (invariant 6); the operators' marks are read from the previous week's report and from this
    one's earlier run, so that a re-run keeps them and the next week honours them.
    """
    before = reports.weeks_before(period, baseline_weeks)
    scans = asyncio.Semaphore(REPORT_SCANS)

    async def scan(work: Awaitable[T]) -> T:
        async with scans:
            return await work

    (groups, users, histograms), baseline, marked = await asyncio.gather(
        asyncio.gather(
            scan(storage.group_counts(period.start, period.end)),
            scan(storage.unique_users(period.start, period.end)),
            scan(storage.generation_time_histogram(period.start, period.end, reports.TIME_BUCKET_MS)),
        ),
        asyncio.gather(*(_metrics(storage, week, scan) for week in before)),
        asyncio.gather(*(scan(storage.get_report(p.id)) for p in (*before[-1:], period))),
    )
    metrics = reports.summarize(groups, users)
    times = reports.generation_times(histograms)
    marks = [m for document in marked if document for m in reports.marks_in(document)]
    detection = await asyncio.to_thread(
        reports.detect,
        metrics,
        list(baseline),
        thresholds or reports.Thresholds(),
        marks_made=marks,
        week_ids=[week.id for week in (*before, period)],
    )
    document = reports.report_document(period, metrics, detection, now, times)
    await storage.save_report(period.id, document, now)
    return document


async def _metrics(
    storage: Reports, period: reports.Period, scan: Callable[[Awaitable[Any]], Awaitable[Any]]
) -> reports.Metrics:
    groups = await scan(storage.group_counts(period.start, period.end))
    return reports.summarize(groups, await scan(storage.unique_users(period.start, period.end)))


async def report_history(
    storage: Reports, period: reports.Period, weeks: int = BASELINE_WEEKS
) -> list[dict[str, Any]]:
    """The stored reports of the weeks before `period`, oldest first (for charts)."""
    found = [await storage.get_report(week.id) for week in reports.weeks_before(period, weeks)]
    return [document for document in found if document is not None]


def parse_period(
    week: str | None = None, start: datetime | None = None, end: datetime | None = None, *, now: datetime
) -> reports.Period:
    """A named ISO week, an explicit [start, end) range, or the 7 days ending now."""
    period = _period(week, start, end, now=now)
    if not (REPORT_YEARS[0] <= period.start.year and period.end.year <= REPORT_YEARS[1]):
        raise InvalidInput(f"Reports cover {REPORT_YEARS[0]} to {REPORT_YEARS[1]}")
    return period


def _period(
    week: str | None, start: datetime | None, end: datetime | None, *, now: datetime
) -> reports.Period:
    try:
        if week:
            return reports.iso_week(week)
        if start is not None or end is not None:
            if start is None or end is None:
                raise ValueError("a range needs both start and end")
            if start.tzinfo is None or end.tzinfo is None:
                raise ValueError("start and end need a time zone, e.g. 2026-11-16T00:00:00Z")
            if not start < end <= now + reports.WEEK * 520:
                raise ValueError("start must be before end")
            return reports.between(start, end)
        return reports.last_7_days(now)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def weeks_between(from_week: str, to_week: str) -> list[reports.Period]:
    """The ISO weeks from one to another, both included, oldest first (a backfill's weeks)."""
    try:
        weeks = reports.weeks_from(reports.iso_week(from_week), reports.iso_week(to_week))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    if not weeks:
        raise InvalidInput(f"{from_week} is after {to_week}")
    return weeks


async def list_reports(storage: Reports, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
    check_cursor(cursor)
    return await storage.list_reports(limit, cursor)


async def get_report(storage: Reports, report_id: str) -> dict[str, Any]:
    if not valid_id(report_id):
        raise InvalidInput(f"Invalid report id '{report_id[:80]}': {ID_RULE}")
    document = await storage.get_report(report_id)
    if document is None:
        raise NotFound(f"Report '{report_id}' not found", id=report_id)
    return document


async def mark_expected(
    storage: Reports,
    report_id: str,
    finding: reports.FindingId,
    note: str,
    now: datetime,
    *,
    expected: bool = True,
) -> dict[str, Any]:
    """Marks a report's finding as expected (or takes the mark off) and stores the report; the
    same pattern is then withheld from the next week's report while it does not grow."""
    document = await get_report(storage, report_id)
    try:
        changed = reports.set_mark(document, finding, reports.isoformat_z(now), note, expected=expected)
    except LookupError as exc:
        raise NotFound(str(exc), id=report_id) from exc
    await storage.save_report(report_id, document, reports.generated_at(document))
    return changed
