"""/v1/reports (admin): list, get (JSON, ?format=md or html), run for a week or a range, and mark
a finding as expected (the next weeks do not alarm on the same pattern unless it grows)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from imagegen import service
from imagegen.api.auth import AdminDep, RuntimeDep
from imagegen.api.common import body_schema, page_size, strict_body
from imagegen.api.errors import documented
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.domain.errors import InvalidInput
from imagegen.reporting import render_html, render_markdown

router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=documented(401, 403, 404, 422))


class ReportRun(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    week: str | None = Field(None, examples=["2026-W47"], description="An ISO week")
    start: datetime | None = Field(None, description="Or a range [start, end), ISO 8601 with a zone")
    end: datetime | None = None


Dimension = Literal["model", "style", "size", "color"]


class ExpectedFinding(BaseModel):
    """Which finding of the report to mark, and why it was expected."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field(
        min_length=1, max_length=64, examples=["failureRate"], description="The finding's metric"
    )
    dimension: Dimension | None = Field(None, description="For a per-key finding: its dimension")
    key: str | None = Field(None, min_length=1, max_length=200, examples=["1024x1792"])
    note: str = Field("", max_length=500, examples=["a campaign for large posters"])


class MarkOut(BaseModel):
    reportId: str  # noqa: N815
    markedAt: str  # noqa: N815
    note: str
    kind: str
    metric: str
    dimension: str | None
    key: str | None
    direction: int = Field(description="+1: the marked finding was a rise, -1 a fall")
    gap: float = Field(description="Its distance from the baseline (log ratio or points)")


class AnomalyOut(BaseModel):
    kind: str
    metric: str
    dimension: str | None
    key: str | None
    observed: float
    expected: float
    lower: float | None = None
    upper: float | None = None
    score: float
    method: str = ""
    severity: Literal["info", "warning", "critical"]
    since: str | None = None
    message: str
    history: list[float | None] = []
    mark: MarkOut | None = None


class MarkedFinding(BaseModel):
    reportId: str  # noqa: N815
    anomaly: AnomalyOut


@router.get("", summary="Stored reports, newest period first")
async def list_reports(
    runtime: RuntimeDep, _admin: AdminDep, limit: str | None = None, cursor: str | None = None
) -> dict[str, Any]:
    size = page_size(limit, runtime)
    page = await service.list_reports(runtime.storage, size, cursor or None)
    return {"items": page.items, "nextCursor": page.next_cursor}


@router.get("/{report_id}", summary="One report; ?format=md or html for a readable one with charts")
async def get_report(
    report_id: str,
    runtime: RuntimeDep,
    _admin: AdminDep,
    format: Annotated[Literal["json", "md", "html"], Query()] = "json",  # noqa: A002
) -> Response:
    document = await service.get_report(runtime.storage, report_id)
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
    return await service.run_report(runtime.storage, period, now)


@router.put(
    "/{report_id}/expected",
    summary="Mark a finding of the report as expected",
    description="The mark is kept on the report; the next weeks' reports withhold the same pattern "
    "(same metric, key and direction) unless its gap from the baseline grows by more than 25 %.",
    response_model=MarkedFinding,
    openapi_extra=body_schema(ExpectedFinding),
)
async def mark_expected(
    report_id: str, request: Request, runtime: RuntimeDep, _admin: AdminDep
) -> MarkedFinding:
    body = await strict_body(request, ExpectedFinding)
    return await _marked(runtime, report_id, _finding(body.metric, body.dimension, body.key), body.note, True)


@router.delete(
    "/{report_id}/expected",
    summary="Take this report's expected mark off a finding",
    response_model=MarkedFinding,
)
async def unmark_expected(
    report_id: str,
    runtime: RuntimeDep,
    _admin: AdminDep,
    metric: Annotated[str, Query(min_length=1, max_length=64)],
    dimension: Annotated[Dimension | None, Query()] = None,
    key: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> MarkedFinding:
    return await _marked(runtime, report_id, _finding(metric, dimension, key), "", False)


def _finding(metric: str, dimension: str | None, key: str | None) -> reports.FindingId:
    if (dimension is None) != (key is None):
        raise InvalidInput("Give both dimension and key for a per-key finding, or neither")
    return reports.FindingId(metric, dimension, key)


async def _marked(
    runtime: RuntimeDep, report_id: str, finding: reports.FindingId, note: str, expected: bool
) -> MarkedFinding:
    changed = await service.mark_expected(
        runtime.storage, report_id, finding, note, utcnow(), expected=expected
    )
    return MarkedFinding(reportId=report_id, anomaly=AnomalyOut.model_validate(changed))


async def _rendered(runtime: RuntimeDep, document: dict[str, Any], format: str) -> Response:  # noqa: A002

    if format == "md":
        return PlainTextResponse(render_markdown(document), media_type="text/markdown")
    if format == "html":
        period = reports.between(
            datetime.fromisoformat(document["periodStart"]), datetime.fromisoformat(document["periodEnd"])
        )
        history = await service.report_history(runtime.storage, period)
        return HTMLResponse(render_html(document, history))
    return JSONResponse(document)
