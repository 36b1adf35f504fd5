"""Rows read back as the domain's records, and a new request's column values."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from imagegen.domain.catalog import ModelSettings
from imagegen.domain.generation import GenerationRequest, NewGeneration, Status
from imagegen.domain.ledger import EntryType, LedgerEntry


def request_from(row: Row[Any]) -> GenerationRequest:
    return GenerationRequest(
        id=row.id,
        user_id=row.user_id,
        model=row.model,
        style=row.style,
        color=row.color,
        size=row.size,
        prompt=row.prompt,
        cost=row.cost,
        status=Status(row.status),
        image_url=row.image_url,
        error=row.error,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        idempotency_key=row.idempotency_key,
        webhook=row.webhook,
        webhook_events=_events(row.webhook_events),
        progress=row._mapping.get("progress"),
    )


def request_values(new: NewGeneration) -> dict[str, Any]:
    """The columns a create writes for its request (see statements.REQUEST_COLUMNS)."""
    spec = new.spec
    return {
        "id": new.id,
        "user_id": spec.user_id,
        "model": spec.model,
        "style": spec.style,
        "color": spec.color,
        "size": spec.size,
        "prompt": spec.prompt,
        "cost": new.cost,
        "status": Status.PENDING.value,
        "attempts": 0,
        "idempotency_key": new.idempotency_key,
        "fingerprint": new.fingerprint,
        "created_at": new.created_at,
        "webhook": new.webhook,
        "webhook_events": ",".join(sorted(new.webhook_events)) or None,
    }


def entry_from(row: Row[Any]) -> LedgerEntry:
    return LedgerEntry(
        id=row.id,
        user_id=row.user_id,
        type=EntryType(row.type),
        delta=row.delta,
        balance_after=row.balance_after,
        generation_request_id=row.generation_request_id,
        reason=row.reason,
        timestamp=row.created_at,
    )


def model_from(row: Any) -> ModelSettings:
    return ModelSettings(
        row.name,
        row.failure_rate,
        row.latency_ms,
        row.enabled,
        deployments=tuple(row.deployments or ()),
        prices={str(size): int(credits) for size, credits in (row.prices or {}).items()},
    )


def model_values(model: ModelSettings) -> dict[str, Any]:
    """The columns of a model's row (NULL for an unbound model or one without prices of its own)."""
    return {
        "failure_rate": model.failure_rate,
        "latency_ms": model.latency_ms,
        "enabled": model.enabled,
        "deployments": [dict(d) for d in model.deployments] or None,
        "prices": dict(model.prices) or None,
    }


def _events(stored: str | None) -> frozenset[str]:
    return frozenset((stored or "").split(",")) - {""}
