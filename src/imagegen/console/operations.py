"""The console's live pages: the overview, the generations and one generation (with its cancel)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter
from fastapi.responses import Response

from imagegen import service
from imagegen.clock import utcnow
from imagegen.console.web import ConsoleDep
from imagegen.domain.errors import ImagegenError, InvalidInput
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.ledger import LedgerFilter
from imagegen.domain.paging import time_cursor

router = APIRouter(prefix="/console", include_in_schema=False)
SCAN_PAGES = 10  # pages read at most to fill one page of a filtered list
PAGE = 50


@router.get("")
async def overview(console: ConsoleDep) -> Response:
    data = await service.overview(console.runtime.storage, utcnow())
    return console.page("overview.html", view=data, nav="overview")


@router.get("/live")
async def live(console: ConsoleDep) -> Response:
    """The overview's figures alone: what the page's script swaps in every few seconds."""
    data = await service.overview(console.runtime.storage, utcnow())
    return console.page("_live.html", view=data)


@router.get("/generations")
async def generations(console: ConsoleDep) -> Response:
    query = console.request.query_params
    filters = {name: query.get(name, "").strip() for name in ("user", "model", "status", "since", "until")}
    try:
        items, next_until = await _filtered(console, filters)
    except ImagegenError as error:
        return console.page(
            "generations.html",
            400,
            items=[],
            filters=filters,
            error=error.message,
            statuses=list(Status),
            nav="generations",
        )
    return console.page(
        "generations.html",
        items=items,
        filters=filters,
        next_until=next_until,
        statuses=list(Status),
        nav="generations",
    )


def _time(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be a time such as 2026-12-07 09:30 (UTC)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def _filtered(
    console: ConsoleDep, filters: dict[str, str]
) -> tuple[list[GenerationRequest], str | None]:
    """A page of requests, newest first: user and status by the port's own filter, the model and
    the time range over its pages (at most SCAN_PAGES of them per page shown)."""
    user = filters["user"] or None
    status = filters["status"] or None
    since, until = _time(filters["since"], "since"), _time(filters["until"], "until")
    cursor = time_cursor(until, "") if until else None
    found: list[GenerationRequest] = []
    for _ in range(SCAN_PAGES):
        page = await service.list_generations(
            console.runtime.storage, user, status, limit=PAGE, cursor=cursor
        )
        for request in page.items:
            if since and request.created_at < since:
                return found, None
            if not filters["model"] or request.model == filters["model"]:
                found.append(request)
        cursor = page.next_cursor
        if cursor is None or len(found) >= PAGE:
            break
    more = cursor is not None and found
    return found, (found[-1].created_at.isoformat() if more else None)


@router.get("/generations/{request_id}")
async def generation(request_id: str, console: ConsoleDep) -> Response:
    storage = console.runtime.storage
    try:
        request = await service.get_generation(storage, request_id)
    except ImagegenError as error:
        return console.refused(error)
    where = LedgerFilter(since=request.created_at - timedelta(seconds=1))
    entries: list = []
    cursor = None
    for _ in range(SCAN_PAGES):
        page = await service.ledger_page(storage, request.user_id, limit=200, cursor=cursor, where=where)
        entries += [e for e in page.items if e.generation_request_id == request.id]
        cursor = page.next_cursor
        if cursor is None:
            break
    return console.page(
        "generation.html",
        item=request,
        entries=entries,
        timeline=_timeline(request, entries),
        nav="generations",
    )


def _timeline(request: GenerationRequest, entries: list) -> list[tuple[datetime, str]]:
    events = [(request.created_at, "created and queued")]
    if request.started_at:
        events.append((request.started_at, f"started (attempt {request.attempts})"))
    if request.completed_at:
        events.append(
            (request.completed_at, request.status.value + (f": {request.error}" if request.error else ""))
        )
    events += [(e.timestamp, f"ledger: {e.type.value} {e.delta:+d}") for e in entries]
    return sorted(events, key=lambda event: event[0])


@router.post("/generations/{request_id}/cancel")
async def cancel(request_id: str, console: ConsoleDep) -> Response:
    try:
        await service.cancel_generation(console.runtime.storage, request_id, utcnow())
    except ImagegenError as error:
        return console.refused(error)
    return console.done(f"/console/generations/{request_id}", "Canceled; its credits were refunded.")
