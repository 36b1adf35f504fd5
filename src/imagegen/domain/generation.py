"""Generation requests and their lifecycle: pending -> running -> completed | failed; pending -> canceled."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def refunded(self) -> bool:
        """Whether a request in this status must have exactly one refund (invariant 3)."""
        return self in (Status.FAILED, Status.CANCELED)


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCELED, Status.FAILED}),
    # running -> pending: a job whose worker died is handed back to the queue for a retry.
    Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.PENDING}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELED: frozenset(),
}


def can_move(current: Status, new: Status) -> bool:
    return new in TRANSITIONS[current]


# Ids travel in URLs and become Firestore document ids: no '/', no whitespace, no control characters.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.@:+-]{1,128}$")
ID_RULE = "1-128 characters: letters, digits and _ . @ : + -"


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value)) and value not in {".", ".."}


@dataclass(frozen=True)
class GenerationSpec:
    """What a client asks for: validated against the catalog before anything is written."""

    user_id: str
    model: str
    style: str
    color: str
    size: str
    prompt: str


@dataclass(frozen=True)
class GenerationRequest:
    id: str
    user_id: str
    model: str
    style: str
    color: str
    size: str
    prompt: str
    cost: int
    status: Status
    image_url: str | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    idempotency_key: str | None = None
    webhook: str | None = None
    webhook_events: frozenset[str] = frozenset()

    def wants_webhook(self, event: str) -> bool:
        return self.webhook is not None and event in self.webhook_events


WEBHOOK_EVENTS = ("start", "completed")


def to_resource(request: GenerationRequest) -> dict[str, object]:
    """The /v1 generation resource (and webhook payload), in the case study's camelCase names.

    `imageUrl` is the path the image is served at; the API makes it absolute.
    """
    return {
        "id": request.id,
        "userId": request.user_id,
        "model": request.model,
        "style": request.style,
        "color": request.color,
        "size": request.size,
        "prompt": request.prompt,
        "cost": request.cost,
        "status": request.status.value,
        "imageUrl": request.image_url,
        "error": request.error,
        "createdAt": iso(request.created_at),
        "startedAt": iso(request.started_at),
        "completedAt": iso(request.completed_at),
        "webhook": request.webhook,
        "webhookEvents": sorted(request.webhook_events),
    }


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")
