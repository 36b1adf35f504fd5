"""The console's admin pages: users (credits, keys), the catalog and models, reports, the audit."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from imagegen import service
from imagegen.clock import utcnow
from imagegen.console.web import ConsoleDep
from imagegen.domain import reports
from imagegen.domain.catalog import size_order
from imagegen.domain.errors import ImagegenError, InvalidInput
from imagegen.domain.ledger import NO_FILTER
from imagegen.reporting import render_html

router = APIRouter(prefix="/console", include_in_schema=False)
LEDGER_PAGE = 25
MAX_BACKFILL_WEEKS = 53  # one request runs at most a year of weeks


@router.get("/users")
async def users(console: ConsoleDep) -> Response:
    """Search by user id: an exact id opens the user's page."""
    wanted = console.request.query_params.get("q", "").strip()
    if not wanted:
        return console.page("users.html", query="", nav="users")
    try:
        user = await service.get_user(console.runtime.storage, wanted)
    except ImagegenError as error:
        return console.page(
            "users.html", 404 if error.status == 404 else 400, query=wanted, error=error.message, nav="users"
        )
    return console.done(f"/console/users/{user.id}", f"Found user {user.id}.")


@router.get("/users/{user_id}")
async def user(user_id: str, console: ConsoleDep) -> Response:
    storage = console.runtime.storage
    cursor = console.request.query_params.get("cursor") or None
    try:
        found, totals = await service.user_totals(storage, user_id)
        page = await service.ledger_page(storage, user_id, limit=LEDGER_PAGE, cursor=cursor, where=NO_FILTER)
        recent = await service.list_generations(storage, user_id, None, limit=10, cursor=None)
    except ImagegenError as error:
        return console.refused(error)
    return console.page(
        "user.html", user=found, totals=totals, ledger=page, generations=recent.items, nav="users"
    )


def _amount(console: ConsoleDep) -> int:
    text = console.field("amount")
    try:
        return int(text)
    except ValueError as exc:
        raise InvalidInput(f"amount must be a whole number of credits, not '{text[:40]}'") from exc


@router.post("/users/{user_id}/credits")
async def move_credits(user_id: str, console: ConsoleDep) -> Response:
    try:
        amount = _amount(console)
        entry = await service.move_credits(
            console.runtime.storage, user_id, amount, console.field("reason"), utcnow()
        )
    except ImagegenError as error:
        return console.refused(error)
    verb = "Granted" if amount > 0 else "Adjusted by"
    return console.done(
        f"/console/users/{user_id}", f"{verb} {amount} credits; balance {entry.balance_after}."
    )


@router.post("/users/{user_id}/keys")
async def issue_key(user_id: str, console: ConsoleDep) -> Response:
    storage = console.runtime.storage
    try:
        await service.get_user(storage, user_id)
        issued = await service.issue_key(storage, user_id, utcnow())
    except ImagegenError as error:
        return console.refused(error)
    return console.page("key_issued.html", user_id=user_id, key_id=issued.id, key=issued.key, nav="users")


@router.post("/keys/revoke")
async def revoke_key(console: ConsoleDep) -> Response:
    key_id, back = console.field("key_id"), console.field("back")
    try:
        await service.revoke_key(console.runtime.storage, key_id, utcnow())
    except ImagegenError as error:
        return console.refused(error)
    target = back if back.startswith("/console/") else "/console/users"
    return console.done(target, f"Key {key_id} revoked: it is refused from now on.")


@router.get("/catalog")
async def catalog(console: ConsoleDep) -> Response:
    current = await console.runtime.storage.catalog()
    settings = console.runtime.settings
    return console.page(
        "catalog.html",
        catalog=current,
        sizes=sorted(current.sizes, key=size_order),
        models=sorted(current.models.values(), key=lambda m: m.name),
        overridden=settings.ai_failure_rate is not None or settings.model_latency_ms is not None,
        nav="catalog",
    )


@router.post("/catalog/options")
async def set_option(console: ConsoleDep) -> Response:
    kind, name = console.field("kind"), console.field("name")
    cost_text = console.field("cost")
    try:
        cost = int(cost_text) if cost_text else None
    except ValueError:
        return console.refused(
            InvalidInput(f"cost must be a whole number of credits, not '{cost_text[:40]}'")
        )
    enabled = console.field("enabled") != "false"
    try:
        await service.set_option(console.runtime.storage, kind, name, enabled=enabled, cost=cost)
    except ImagegenError as error:
        return console.refused(error)
    console.runtime.config.invalidate()
    return console.done("/console/catalog", f"{kind} {name}: {'enabled' if enabled else 'disabled'}.")


@router.post("/models/{name}")
async def set_model(name: str, console: ConsoleDep) -> Response:
    try:
        failure = float(console.field("failure_rate")) if console.field("failure_rate") else None
        latency = int(console.field("latency_ms")) if console.field("latency_ms") else None
    except ValueError:
        return console.refused(
            InvalidInput("failure rate is a number from 0 to 1; latency whole milliseconds")
        )
    if failure is not None and not 0 <= failure <= 1:
        return console.refused(InvalidInput("failure rate must be from 0 to 1"))
    if latency is not None and not 0 <= latency <= 600_000:
        return console.refused(InvalidInput("latency must be from 0 to 600000 ms"))
    enabled = {"true": True, "false": False}.get(console.field("enabled"))
    try:
        await service.set_model(
            console.runtime.storage, name, failure_rate=failure, latency_ms=latency, enabled=enabled
        )
    except ImagegenError as error:
        return console.refused(error)
    console.runtime.config.invalidate()
    return console.done("/console/catalog", f"Model {name} saved.")


@router.get("/reports")
async def report_list(console: ConsoleDep) -> Response:
    cursor = console.request.query_params.get("cursor") or None
    try:
        page = await service.list_reports(console.runtime.storage, 25, cursor)
    except ImagegenError as error:
        return console.refused(error)
    return console.page("reports.html", reports=page, nav="reports")


@router.get("/reports/{report_id}")
async def report_page(report_id: str, console: ConsoleDep) -> Response:
    """The report inside the console's frame (the page itself is the next route's)."""
    try:
        await service.get_report(console.runtime.storage, report_id)
    except ImagegenError as error:
        return console.refused(error)
    return console.page("report.html", report_id=report_id, nav="reports")


@router.get("/reports/{report_id}/page")
async def report_html(report_id: str, console: ConsoleDep) -> Response:
    """The report's HTML page: the one `imagegen report --format html` writes, from the same code."""
    storage = console.runtime.storage
    try:
        document = await service.get_report(storage, report_id)
    except ImagegenError as error:
        return console.refused(error)
    period = reports.between(
        datetime.fromisoformat(document["periodStart"]), datetime.fromisoformat(document["periodEnd"])
    )
    html = render_html(document, await service.report_history(storage, period))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.post("/reports/run")
async def run_report(console: ConsoleDep) -> Response:
    now = utcnow()
    try:
        period = service.parse_period(console.field("week") or None, now=now)
        document = await service.run_report(console.runtime.storage, period, now)
    except ImagegenError as error:
        return console.refused(error)
    return console.done(f"/console/reports/{document['id']}", f"Report {document['id']} run.")


@router.post("/reports/backfill")
async def backfill(console: ConsoleDep) -> Response:
    try:
        weeks = service.weeks_between(console.field("from"), console.field("to"))
        if len(weeks) > MAX_BACKFILL_WEEKS:
            raise InvalidInput(
                f"Backfill at most {MAX_BACKFILL_WEEKS} weeks at a time (the CLI has no limit)"
            )
        for week in weeks:
            await service.run_report(console.runtime.storage, week, utcnow())
    except ImagegenError as error:
        return console.refused(error)
    return console.done(
        "/console/reports", f"Backfilled {len(weeks)} weeks, {weeks[0].id} to {weeks[-1].id}."
    )


@router.get("/audit")
async def audit(console: ConsoleDep) -> Response:
    return console.page("audit.html", ran=False, violations=[], nav="audit")


@router.post("/audit")
async def run_audit(console: ConsoleDep) -> Response:
    violations = await service.verify(console.runtime.storage)
    return console.page("audit.html", ran=True, violations=violations, nav="audit")
