"""JSONL export and import in the case study's field names, one object per line with a `collection`.

    {"collection": "users", "id": "testUser1", "credits": 100, "createdAt": "..."}
    {"collection": "generationRequests", "id": "...", "userId": "...", "model": "model-a", "style": "anime",
     "color": "vibrant", "size": "512x512", "prompt": "...", "status": "completed", "cost": 1,
     "createdAt": "...", "imageUrl": "..."}
    {"collection": "transactions", "id": "...", "userId": "...", "type": "deduction", "credits": 1,
     "generationRequestId": "...", "timestamp": "..."}
    {"collection": "reports", "id": "2026-W47", ...the report document...}
    {"collection": "models", "id": "model-a", "failureRate": 0.05, "latencyMs": 300, "enabled": true,
     "deployments": [{"engine": "openai", "settings": {...}}], "prices": {"1024x1024": 5}}

Every line is validated before it is stored; the first bad line aborts the whole import, whose
storage transaction then rolls back, so nothing is half-imported. A `models` line is validated as
the admin API validates an edit (the binding with this process's engines; no credentials), except
that its sizes are not checked against the catalog (an export carries no sizes), and it replaces
the stored model of that name: a binding and its prices must survive a move to a new database,
whose first start made the initial models unbound.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from imagegen.domain.catalog import ModelSettings, model_record
from imagegen.domain.errors import InvalidBinding, InvalidInput, InvalidPrices
from imagegen.domain.generation import ID_RULE, Status, valid_id
from imagegen.domain.ledger import EntryType, signed_delta
from imagegen.domain.validation import parse_prices
from imagegen.engines.binding import MAX_DEPLOYMENTS
from imagegen.engines.registry import Registry
from imagegen.service.bindings import binding_deployments


def _id(value: str) -> str:
    if not valid_id(value):
        raise ValueError(f"invalid id '{value[:80]}': {ID_RULE}")
    return value


Id = Annotated[str, AfterValidator(_id)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class UserRecord(_Record):
    collection: Literal["users"]
    id: Id
    credits: int = Field(ge=0)
    created_at: AwareDatetime | None = Field(None, alias="createdAt")


class RequestRecord(_Record):
    collection: Literal["generationRequests"]
    id: Id
    user_id: Id = Field(alias="userId")
    model: str = Field(min_length=1, max_length=64)
    style: str = Field(min_length=1, max_length=64)
    color: str = Field(min_length=1, max_length=64)
    size: str = Field(min_length=1, max_length=32)
    prompt: str = ""
    status: Status
    cost: int = Field(ge=0)
    created_at: AwareDatetime = Field(alias="createdAt")
    started_at: AwareDatetime | None = Field(None, alias="startedAt")
    completed_at: AwareDatetime | None = Field(None, alias="completedAt")
    image_url: str | None = Field(None, alias="imageUrl")
    error: str | None = None


class EntryRecord(_Record):
    collection: Literal["transactions"]
    id: Id
    user_id: Id = Field(alias="userId")
    type: EntryType
    credits: int
    generation_request_id: Id | None = Field(None, alias="generationRequestId")
    reason: str | None = None
    balance_after: int | None = Field(None, alias="balanceAfter")
    timestamp: AwareDatetime


class ModelRecord(_Record):
    collection: Literal["models"]
    id: Id
    failure_rate: float = Field(0.05, ge=0, le=1, alias="failureRate")
    latency_ms: int = Field(300, ge=0, le=600_000, alias="latencyMs")
    enabled: bool = True
    deployments: list[Any] = Field(default_factory=list, max_length=MAX_DEPLOYMENTS)
    prices: dict[str, Any] = Field(default_factory=dict)


class ReportRecord(_Record):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    collection: Literal["reports"]
    id: Id
    period_start: AwareDatetime = Field(alias="periodStart")
    period_end: AwareDatetime = Field(alias="periodEnd")


def parse_line(line_no: int, line: str, registry: Registry | None = None) -> dict[str, Any] | None:
    """A normalized record for the storage adapter, or None for a blank line.

    `registry`: the engines a `models` line's binding may name (by default, those installed)."""
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"line {line_no}: not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"line {line_no}: expected a JSON object")
    parser = PARSERS.get(raw.get("collection"))  # type: ignore[arg-type]
    if parser is None:
        raise InvalidInput(f"line {line_no}: 'collection' must be one of {', '.join(PARSERS)}")
    try:
        if parser is _model:
            return _model(raw, registry or _installed())
        return parser(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"line {line_no}: {problems}") from exc
    except (InvalidBinding, InvalidPrices) as exc:
        found = exc.details.get("problems")
        listed = "; ".join(f"{p.field}: {p.message}" for p in found) if isinstance(found, list) else ""
        raise InvalidInput(f"line {line_no}: {exc.message}: {listed}") from exc


def _user(raw: dict[str, Any]) -> dict[str, Any]:
    return UserRecord.model_validate(raw).model_dump()


def _request(raw: dict[str, Any]) -> dict[str, Any]:
    record = RequestRecord.model_validate(raw).model_dump()
    record["status"] = record["status"].value
    return record


def _entry(raw: dict[str, Any]) -> dict[str, Any]:
    record = EntryRecord.model_validate(raw)
    return {
        "collection": "transactions",
        "id": record.id,
        "user_id": record.user_id,
        "type": record.type.value,
        "delta": signed_delta(record.type, record.credits),
        "balance_after": record.balance_after,
        "generation_request_id": record.generation_request_id,
        "reason": record.reason,
        "created_at": record.timestamp,
    }


def _report(raw: dict[str, Any]) -> dict[str, Any]:
    record = ReportRecord.model_validate(raw)
    document = {k: v for k, v in raw.items() if k != "collection"}
    return {
        "collection": "reports",
        "id": record.id,
        "document": document,
        "period_start": record.period_start,
        "period_end": record.period_end,
    }


def _model(raw: dict[str, Any], registry: Registry) -> dict[str, Any]:
    record = ModelRecord.model_validate(raw)
    deployments: tuple[dict[str, Any], ...] = ()
    if record.deployments:
        deployments = binding_deployments(record.id, {"deployments": record.deployments}, registry, None)
    prices = parse_prices(record.id, record.prices, None)
    model = ModelSettings(
        record.id, record.failure_rate, record.latency_ms, record.enabled, deployments, prices
    )
    return model_record(model)


_registry: list[Registry] = []


def _installed() -> Registry:
    if not _registry:
        _registry.append(Registry.discover())
    return _registry[0]


PARSERS: dict[str, Callable[..., dict[str, Any]]] = {
    "users": _user,
    "generationRequests": _request,
    "transactions": _entry,
    "reports": _report,
    "models": _model,
}


def parse_lines(lines: Iterable[str], registry: Registry | None = None) -> Iterator[dict[str, Any]]:
    for line_no, line in enumerate(lines, start=1):
        record = parse_line(line_no, line, registry)
        if record is not None:
            yield record


def to_case_study(record: dict[str, Any]) -> dict[str, Any]:
    """The JSONL object for one of the adapter's normalized records."""
    collection = record["collection"]
    if collection == "reports":
        return {"collection": "reports", **record["document"]}
    if collection == "transactions":
        entry_type = EntryType(record["type"])
        credits = record["delta"] if entry_type is EntryType.ADJUSTMENT else abs(record["delta"])
        return {
            "collection": "transactions",
            "id": record["id"],
            "userId": record["user_id"],
            "type": entry_type.value,
            "credits": credits,
            "generationRequestId": record["generation_request_id"],
            "reason": record["reason"],
            "balanceAfter": record["balance_after"],
            "timestamp": _iso(record["created_at"]),
        }
    return {_camel(key): _iso(value) for key, value in record.items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value
