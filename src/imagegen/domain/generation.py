"""Generation requests and their lifecycle: pending -> running -> completed | failed; pending or
running -> canceled."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum


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


class Move(Enum):
    """The lifecycle's moves, each from the statuses it may start in to the one it ends in.

    Every storage guards its state changes with these (a conditional UPDATE's WHERE, a document
    write's precondition, the in-memory check): a move asked of a request in any other status
    changes nothing, so a duplicate or late call is harmless.
    """

    CLAIM = (frozenset({Status.PENDING}), Status.RUNNING)
    REQUEUE = (frozenset({Status.RUNNING}), Status.PENDING)  # its worker died: back in the queue
    COMPLETE = (frozenset({Status.RUNNING}), Status.COMPLETED)
    FAIL = (frozenset({Status.RUNNING}), Status.FAILED)
    CANCEL = (frozenset({Status.PENDING, Status.RUNNING}), Status.CANCELED)  # a running one: its worker stops
    CLOSE_UNDEBITED = (frozenset({Status.PENDING, Status.RUNNING}), Status.FAILED)  # imported, never paid

    def __init__(self, sources: frozenset[Status], target: Status) -> None:
        self.sources = sources
        self.target = target

    def allows(self, status: Status) -> bool:
        return status in self.sources


TRANSITIONS: dict[Status, frozenset[Status]] = {
    status: frozenset(move.target for move in Move if status in move.sources) for status in Status
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
    progress: float | None = None  # 0..1, as the engine last reported it while running

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
        "progress": progress_of(request),
    }


def progress_of(request: GenerationRequest) -> float:
    """0 until an engine reports progress, 1 once completed."""
    if request.status is Status.COMPLETED:
        return 1.0
    return request.progress or 0.0


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class NewGeneration:
    """A validated, priced request, ready to be debited and queued."""

    id: str
    spec: GenerationSpec
    cost: int
    created_at: datetime
    idempotency_key: str | None = None
    fingerprint: str | None = None  # a hash of the body, to tell a replay from a reused key
    webhook: str | None = None
    webhook_events: frozenset[str] = frozenset()
    max_in_flight: int | None = None  # refuse (429) when the user already has this many queued or running

    def queued(self) -> GenerationRequest:
        """The request this create queues: pending, never attempted (what every storage writes)."""
        spec = self.spec
        return GenerationRequest(
            id=self.id,
            user_id=spec.user_id,
            model=spec.model,
            style=spec.style,
            color=spec.color,
            size=spec.size,
            prompt=spec.prompt,
            cost=self.cost,
            status=Status.PENDING,
            image_url=None,
            error=None,
            attempts=0,
            created_at=self.created_at,
            started_at=None,
            completed_at=None,
            idempotency_key=self.idempotency_key,
            webhook=self.webhook,
            webhook_events=self.webhook_events,
        )
