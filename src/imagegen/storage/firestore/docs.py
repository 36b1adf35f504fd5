"""Documents <-> domain objects, in the case study's field names (camelCase, Firestore timestamps).

    users/{userId}                      credits, createdAt, ledgerSeq, inFlight
    users/{userId}/transactions/{id}    type, credits, delta, balanceAfter, generationRequestId, reason,
                                        timestamp, seq, userId, idempotencyKey
    generationRequests/{id}             userId, model, style, color, size, prompt, status, cost, imageUrl,
                                        error, attempts, createdAt, startedAt, completedAt, leaseOwner,
                                        leaseExpiresAt, idempotencyKey, fingerprint, source, webhook,
                                        webhookEvents
    generationKeys/{sha256(user, key)}  requestId, userId, key, fingerprint (one per Idempotency-Key)
    models/{name}                       failureRate, latencyMs, enabled, deployments (the binding),
                                        prices ({size: credits}); see catalog.model_doc

`inFlight` counts the user's requests pending or running (the in-flight limit reads it);
`ledgerSeq` counts a user's entries; each entry's `seq` orders the ledger (newest first) even when two
entries share a timestamp, as the SQL adapter's global sequence does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.ledger import EntryType, LedgerEntry

USERS = "users"
TRANSACTIONS = "transactions"
REQUESTS = "generationRequests"
REPORTS = "reports"
MODELS = "models"
OPTION_KINDS = ("styles", "colors", "sizes")
API_KEYS = "apiKeys"
IDEMPOTENCY_KEYS = "idempotencyKeys"
GENERATION_KEYS = "generationKeys"
WEBHOOKS = "webhookDeliveries"
SCHEDULED_RUNS = "scheduledRuns"
META = "meta"
REPORT_META = "_imagegen"  # a report's period as timestamps, for ordering; not part of the document


def utc(value: Any) -> datetime | None:
    """A plain aware datetime from what Firestore hands back (DatetimeWithNanoseconds, in UTC)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=UTC,
    )


def required_utc(value: Any) -> datetime:
    converted = utc(value)
    if converted is None:
        raise TypeError("expected a timestamp, got None")
    return converted


def aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("imagegen stores only timezone-aware datetimes")
    return value


def request_from(doc_id: str, data: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(
        id=doc_id,
        user_id=data["userId"],
        model=data["model"],
        style=data["style"],
        color=data["color"],
        size=data["size"],
        prompt=data.get("prompt") or "",
        cost=int(data["cost"]),
        status=Status(data["status"]),
        image_url=data.get("imageUrl"),
        error=data.get("error"),
        attempts=int(data.get("attempts") or 0),
        created_at=required_utc(data["createdAt"]),
        started_at=utc(data.get("startedAt")),
        completed_at=utc(data.get("completedAt")),
        idempotency_key=data.get("idempotencyKey"),
        webhook=data.get("webhook"),
        webhook_events=frozenset(data.get("webhookEvents") or ()),
        progress=data.get("progress"),
    )


def entry_doc(entry: LedgerEntry, seq: int, idempotency_key: str | None = None) -> dict[str, Any]:
    return {
        "userId": entry.user_id,
        "type": entry.type.value,
        "credits": entry.credits,
        "delta": entry.delta,
        "balanceAfter": entry.balance_after,
        "generationRequestId": entry.generation_request_id,
        "reason": entry.reason,
        "timestamp": aware(entry.timestamp),
        "seq": seq,
        "idempotencyKey": idempotency_key,
    }


def entry_from(doc_id: str, user_id: str, data: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        id=doc_id,
        user_id=user_id,
        type=EntryType(data["type"]),
        delta=int(data["delta"]),
        balance_after=None if data.get("balanceAfter") is None else int(data["balanceAfter"]),
        generation_request_id=data.get("generationRequestId"),
        reason=data.get("reason"),
        timestamp=required_utc(data["timestamp"]),
    )


def entry_id(request_id: str, entry_type: EntryType) -> str:
    """The one possible id of a request's deduction or refund: a second one cannot be created."""
    return f"{request_id}_{entry_type.value}"


def report_doc(
    document: dict[str, Any], start: datetime, end: datetime, saved_at: datetime
) -> dict[str, Any]:
    """The report's own fields at the top (as the case study stored them), its period as timestamps."""
    meta = {"periodStart": aware(start), "periodEnd": aware(end), "savedAt": aware(saved_at)}
    return {**document, REPORT_META: meta}


def report_from(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key != REPORT_META}
