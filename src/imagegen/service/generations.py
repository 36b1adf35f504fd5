"""Generation requests: THE create use case, the wait for one to finish, reads and the cancel.

`create_generation` is the one way a request is made, whoever asks (the /v1 route, the case-study
route, the Cloud Functions, the CLI's tests): validate the body, price it from the catalog it is
given (the process's ConfigCache snapshot), authorize it (the key's right to act, the rate limit),
then debit and enqueue it in one storage call that checks the configuration version the price was
read under. A debit refused as StaleConfig (an admin edit or a key revocation since the snapshot)
is redone from a fresh snapshot, the caller's key checked again first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from imagegen.domain.catalog import Catalog
from imagegen.domain.errors import (
    GenerationNotFound,
    InvalidInput,
    InvalidState,
    StaleConfig,
    StorageUnavailable,
    Unauthenticated,
)
from imagegen.domain.generation import ID_RULE, GenerationRequest, NewGeneration, Status, valid_id
from imagegen.domain.ids import new_id
from imagegen.domain.paging import Page
from imagegen.domain.validation import InvalidGeneration, parse_generation, parse_webhook
from imagegen.domain.webhooks import DeliveryState
from imagegen.ports import CatalogStore, Generations, Keys, Lease, Outbox
from imagegen.service.checks import check_cursor, check_idempotency_key, check_user_id
from imagegen.service.config_cache import ConfigCache
from imagegen.service.keys import UNKNOWN_KEY

if TYPE_CHECKING:
    from imagegen.background.completions import Completions

STALE_ATTEMPTS = 5  # a create priced from a snapshot that went stale is redone this many times


class CreateStorage(Generations, CatalogStore, Keys, Protocol):
    """What a create reads and writes: the catalog and the keys (through the cache), the debit."""


def anyone(user_id: str) -> None:
    """No check (the service's own callers: the CLI, tests)."""


@dataclass(frozen=True)
class CreateRules:
    """What a deployment allows in a create, from its settings (api/inputs.py `create_rules`)."""

    max_prompt_length: int = 1000
    allow_private_webhooks: bool = False  # webhooks to loopback or private addresses (local use)
    max_in_flight: int | None = None  # a user's queued and running requests at most (429 past it)


async def create_generation(
    storage: CreateStorage,
    body: object,
    rules: CreateRules = CreateRules(),
    *,
    now: datetime,
    idempotency_key: str | None = None,
    authorize: Callable[[str], None] = anyone,
    config: ConfigCache | None = None,
    key_hash: str | None = None,
    claim: Lease | None = None,
) -> tuple[GenerationRequest, bool]:
    """Validates, prices, authorizes, debits and enqueues: (request, True), or (the first request,
    False) for a replayed Idempotency-Key.

    `config`: the process's cache of the catalog and keys (a new one, read now, if None).
    `authorize(user_id)` runs after validation and before anything is written. `key_hash`: the
    caller's key, checked again when the configuration changed under the create (it may be the
    revocation). `claim`: create the request already running under this lease (a Cloud Function
    runs the job it creates).
    """
    cache = config or ConfigCache(storage)
    for _ in range(STALE_ATTEMPTS):
        version, catalog = await cache.current()
        try:
            new = prepare_generation(
                catalog, body, rules, now=now, idempotency_key=idempotency_key, authorize=authorize
            )
        except InvalidInput:
            # Refused by the cached catalog: an option added or enabled since would only show in a
            # fresh one, so look before refusing (a rare path: one small read).
            if await storage.config_version() == version:
                raise
            await cache.refresh()
            continue
        try:
            return await storage.debit_and_enqueue(new, version, claim)
        except StaleConfig:
            await cache.refresh()
            if key_hash is not None and await cache.lookup(key_hash) is None:
                raise Unauthenticated(UNKNOWN_KEY) from None
    raise StorageUnavailable("the catalog kept changing during this create; try again")


def prepare_generation(
    catalog: Catalog,
    body: object,
    rules: CreateRules = CreateRules(),
    *,
    now: datetime,
    idempotency_key: str | None = None,
    authorize: Callable[[str], None] = anyone,
) -> NewGeneration:
    """A create validated and priced against `catalog`, ready to debit (no I/O)."""
    check_idempotency_key(idempotency_key)
    try:
        spec = parse_generation(body, catalog, max_prompt_length=rules.max_prompt_length)
        assert isinstance(body, Mapping)
        webhook, events = parse_webhook(body, allow_private=rules.allow_private_webhooks)
    except InvalidGeneration as exc:
        raise InvalidInput(str(exc), problems=exc.problems) from exc
    authorize(spec.user_id)
    return NewGeneration(
        id=new_id(),
        spec=spec,
        cost=catalog.cost_of(spec.size, spec.model),
        created_at=now,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint({**asdict(spec), "webhook": webhook, "events": sorted(events)})
        if idempotency_key
        else None,
        webhook=webhook,
        webhook_events=events,
        max_in_flight=rules.max_in_flight,
    )


def fingerprint(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def wait_until_done(
    storage: Generations,
    created: GenerationRequest,
    timeout: float,
    *,
    recheck: float,
    completions: Completions | None = None,
    while_waiting: Callable[[], Awaitable[bool]] | None = None,
) -> GenerationRequest:
    """The request once it is terminal, or as it stands when `timeout` runs out.

    Starts from the request as the create returned it and reads it again when `completions` says
    its job ended (workers in this process, other processes' NOTIFYs), or every `recheck` seconds
    (a process that cannot be heard may finish it). `while_waiting`: where no worker runs in the
    background (a Cloud Function), the waiter runs queued jobs itself, True when it ran one.
    """
    deadline = time.monotonic() + timeout
    current = created
    while not current.status.terminal:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if while_waiting is not None and await while_waiting():
            pass  # a job ran: perhaps this one, look at once
        elif completions is not None:
            await completions.wait(created.id, min(remaining, recheck))
        else:
            await asyncio.sleep(min(remaining, recheck))
        current = await get_generation(storage, created.id)
    return current


async def list_generations(
    storage: Generations, user_id: str | None, status: str | None, *, limit: int, cursor: str | None
) -> Page[GenerationRequest]:
    if user_id is not None:
        check_user_id(user_id)
    check_cursor(cursor)
    try:
        wanted = Status(status) if status else None
    except ValueError as exc:
        allowed = ", ".join(s.value for s in Status)
        raise InvalidInput(f"Invalid status '{status}'. Valid values: {allowed}") from exc
    return await storage.list_requests(user_id, wanted, limit, cursor)


async def get_generation(storage: Generations, request_id: str) -> GenerationRequest:
    if not valid_id(request_id):
        raise InvalidInput(f"Invalid generation id '{request_id[:80]}': {ID_RULE}")
    request = await storage.get_request(request_id)
    if request is None:
        raise GenerationNotFound(request_id)
    return request


async def cancel_generation(storage: Generations, request_id: str, now: datetime) -> GenerationRequest:
    if not await storage.cancel_and_refund(request_id, now):
        request = await get_generation(storage, request_id)
        raise InvalidState(
            f"Only a pending or running request can be canceled; this one is {request.status.value}",
            id=request_id,
            currentStatus=request.status.value,
        )
    return await get_generation(storage, request_id)


def is_terminal(request: GenerationRequest) -> bool:
    return request.status.terminal


async def generation_webhooks(storage: Outbox, request_id: str) -> list[DeliveryState]:
    """A request's webhook deliveries, oldest first, with where each stands."""
    if not valid_id(request_id):
        raise InvalidInput(f"Invalid request id '{request_id[:80]}': {ID_RULE}")
    return await storage.request_webhooks(request_id)
