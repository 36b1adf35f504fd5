"""/v1/reports (admin): list, get (JSON, ?format=md or html), run for a week or a range."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from imagegen import service
from imagegen.api.auth import AdminDep, RuntimeDep
from imagegen.api.common import body_schema, page_size, strict_body
from imagegen.api.errors import documented
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.reporting import render_html, render_markdown

router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=documented(401, 403, 404, 422))


class ReportRun(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    week: str | None = Field(None, examples=["2026-W47"], description="An ISO week")
    start: datetime | None = Field(None, description="Or a range [start, end), ISO 8601 with a zone")
    end: datetime | None = None


@router.get("", summary="Stored reports, newest period first")
async def list_reports(
    runtime: RuntimeDep, _admin: AdminDep, limit: str | None = None, cursor: str | None = None
) -> dict[str, Any]:
    size = page_size(limit, runtime)
    page = await run_in_threadpool(service.list_reports, runtime.storage, size, cursor or None)
    return {"items": page.items, "nextCursor": page.next_cursor}


@router.get("/{report_id}", summary="One report; ?format=md or html for a readable one with charts")
async def get_report(
    report_id: str,
    runtime: RuntimeDep,
    _admin: AdminDep,
    format: Annotated[Literal["json", "md", "html"], Query()] = "json",  # noqa: A002
) -> Response:
    document = await run_in_threadpool(service.get_report, runtime.storage, report_id)
    return await _rendered(runtime, document, format)


@router.post(
    "",
    status_code=201,
    summary="Run (or re-run) the report for a week or a range",
    openapi_extra=body_schema(ReportRun),
)
async def run_report(request: Request, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, Any]:
    body = await strict_body(request, ReportRun)
    now = utcnow()
    period = service.parse_period(body.week, body.start, body.end, now=now)
    return await run_in_threadpool(service.run_report, runtime.storage, period, now)


async def _rendered(runtime: RuntimeDep, document: dict[str, Any], format: str) -> Response:  # noqa: A002

    if format == "md":
        return PlainTextResponse(render_markdown(document), media_type="text/markdown")
    if format == "html":
        period = reports.between(
            datetime.fromisoformat(document["periodStart"]), datetime.fromisoformat(document["periodEnd"])
        )
        history = await run_in_threadpool(service.report_history, runtime.storage, period)
        return HTMLResponse(render_html(document, history))
    return JSONResponse(document)
