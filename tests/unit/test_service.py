"""The service layer's rules, on the in-memory storage: no database, so each test runs in microseconds.

What is tested here is the use cases' own behaviour (validation, pricing, authorization, refusals,
state changes through the port); that every adapter stores the same way is the contract suite's job.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from imagegen import service
from imagegen.background import jobs
from imagegen.domain import reports
from imagegen.domain.errors import (
    Forbidden,
    InsufficientCredits,
    InvalidInput,
    InvalidState,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    UserExists,
    UserNotFound,
)
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.ports import Lease
from imagegen.storage.memory import MemoryStorage
from tests.integration.builders import BODY, LEASE, T0

MINUTE = timedelta(minutes=1)


@pytest.fixture
async def storage() -> MemoryStorage:
    storage = MemoryStorage()
    assert await service.first_start(storage, T0) is not None
    return storage


async def create(
    storage: MemoryStorage, body: object = BODY, *, max_in_flight: int | None = None, **options: Any
) -> tuple[GenerationRequest, bool]:
    rules = service.CreateRules(max_prompt_length=100, max_in_flight=max_in_flight)
    return await service.create_generation(storage, body, rules, **{"now": T0, **options})


async def balance(storage: MemoryStorage, user_id: str) -> int:
    user = await storage.get_user(user_id)
    assert user is not None
    return user.credits


async def claim(storage: MemoryStorage, worker: str, now: datetime = T0) -> GenerationRequest:
    job = await storage.claim_job(Lease(worker, now + LEASE), now)
    assert job is not None, "expected a pending job to claim"
    return job


async def whole_ledger(storage: MemoryStorage, user_id: str) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    cursor = None
    while True:
        page = await storage.ledger(user_id, 100, cursor)
        entries += page.items
        if page.next_cursor is None:
            return entries
        cursor = page.next_cursor


# -- first start ------------------------------------------------------------------------------
async def test_first_start_loads_the_initial_data_once_and_makes_keys_that_authenticate(
    storage: MemoryStorage,
) -> None:
    assert await service.first_start(storage, T0 + MINUTE) is None
    assert (await balance(storage, "testUser1"), await balance(storage, "testUser2")) == (100, 10)
    assert sorted((await storage.catalog()).models) == ["model-a", "model-b"]


async def test_the_initial_keys_authenticate_as_admin_and_as_their_users() -> None:
    storage = MemoryStorage()
    first = await service.first_start(storage, T0)
    assert first is not None

    assert (await service.authenticate(storage, first.admin_key)).is_admin
    assert (await service.authenticate(storage, first.user_keys["testUser2"])).user_id == "testUser2"


# -- creating generations ---------------------------------------------------------------------
async def test_a_create_is_priced_from_the_catalog_and_debits_at_once(storage: MemoryStorage) -> None:
    request, created = await service.create_generation(
        storage, {**BODY, "size": "1024x1792"}, service.CreateRules(max_prompt_length=100), now=T0
    )

    assert created and (request.cost, request.status) == (4, Status.PENDING)
    assert await balance(storage, "testUser1") == 96


async def test_a_price_change_applies_to_the_next_create(storage: MemoryStorage) -> None:
    await service.set_option(storage, "sizes", "512x512", enabled=True, cost=7)

    request, _ = await service.create_generation(
        storage, BODY, service.CreateRules(max_prompt_length=100), now=T0
    )

    assert request.cost == 7


async def test_an_invalid_create_lists_its_problems_and_writes_nothing(storage: MemoryStorage) -> None:
    with pytest.raises(InvalidInput) as caught:
        await create(storage, {**BODY, "style": "cubism", "size": None})

    assert "Missing required fields: [size]" in caught.value.message
    problems = caught.value.details["problems"]
    assert {p.field for p in problems} == {"size", "style"}
    assert await balance(storage, "testUser1") == 100
    assert (await storage.list_requests("testUser1", None, 10, None)).items == []


async def test_a_disabled_style_is_refused_until_it_is_enabled_again(storage: MemoryStorage) -> None:
    await service.set_option(storage, "styles", "anime", enabled=False, cost=None)
    with pytest.raises(InvalidInput, match="Invalid style 'anime'"):
        await create(storage)

    await service.set_option(storage, "styles", "anime", enabled=True, cost=None)

    assert (await create(storage))[1]


async def test_a_prompt_over_the_limit_is_refused(storage: MemoryStorage) -> None:
    with pytest.raises(InvalidInput, match="Prompt is 101 characters"):
        await create(storage, {**BODY, "prompt": "x" * 101})


async def test_authorization_runs_after_validation_and_before_anything_is_written(
    storage: MemoryStorage,
) -> None:
    seen: list[str] = []

    def refuse(user_id: str) -> None:
        seen.append(user_id)
        raise Forbidden("not yours")

    with pytest.raises(InvalidInput):
        await create(storage, {**BODY, "model": "model-z"}, authorize=refuse)
    assert seen == []  # an invalid body is refused before anyone is asked

    with pytest.raises(Forbidden):
        await create(storage, authorize=refuse)

    assert seen == ["testUser1"]
    assert await balance(storage, "testUser1") == 100


async def test_a_create_without_enough_credits_is_refused_and_writes_nothing(storage: MemoryStorage) -> None:
    await service.move_credits(storage, "testUser2", -10, "spent elsewhere", T0)

    with pytest.raises(InsufficientCredits):
        await create(storage, {**BODY, "userId": "testUser2"})

    assert (await storage.list_requests("testUser2", None, 10, None)).items == []


async def test_a_create_for_an_unknown_user_is_user_not_found(storage: MemoryStorage) -> None:
    with pytest.raises(UserNotFound):
        await create(storage, {**BODY, "userId": "nobody"})


async def test_the_in_flight_limit_refuses_with_429_once_reached_and_frees_a_place_when_a_job_ends(
    storage: MemoryStorage,
) -> None:
    first, _ = await create(storage, max_in_flight=2)
    await create(storage, max_in_flight=2)

    with pytest.raises(TooManyRequests) as caught:
        await create(storage, max_in_flight=2)
    assert caught.value.retry_after >= 1

    await service.cancel_generation(storage, first.id, T0)
    assert (await create(storage, max_in_flight=2))[1]


async def test_a_user_both_out_of_credits_and_at_the_in_flight_limit_is_told_to_retry_later(
    storage: MemoryStorage,
) -> None:
    await create(storage, {**BODY, "userId": "testUser2", "size": "1024x1024"}, max_in_flight=2)
    await create(storage, {**BODY, "userId": "testUser2", "size": "1024x1792"}, max_in_flight=2)
    assert await balance(storage, "testUser2") == 3  # less than the next create's 4

    with pytest.raises(TooManyRequests):  # the limit first: a job that ends may refund as well
        await create(storage, {**BODY, "userId": "testUser2", "size": "1024x1792"}, max_in_flight=2)
    with pytest.raises(InsufficientCredits):  # without the limit, the balance refuses it
        await create(storage, {**BODY, "userId": "testUser2", "size": "1024x1792"})

    assert await balance(storage, "testUser2") == 3


async def test_a_retried_create_with_its_idempotency_key_returns_the_first_and_debits_once(
    storage: MemoryStorage,
) -> None:
    first, created = await create(storage, idempotency_key="order-1")
    again, created_again = await create(storage, idempotency_key="order-1")

    assert (created, created_again) == (True, False)
    assert again == first
    assert await balance(storage, "testUser1") == 99


async def test_an_idempotency_key_reused_with_another_body_is_a_conflict(storage: MemoryStorage) -> None:
    await create(storage, idempotency_key="order-1")

    with pytest.raises(Exception, match="different request body"):
        await create(storage, {**BODY, "size": "1024x1024"}, idempotency_key="order-1")

    assert await balance(storage, "testUser1") == 99


# -- canceling --------------------------------------------------------------------------------
async def test_canceling_a_pending_generation_refunds_it_once(storage: MemoryStorage) -> None:
    request, _ = await create(storage)

    canceled = await service.cancel_generation(storage, request.id, T0 + MINUTE)

    assert canceled.status is Status.CANCELED
    assert await balance(storage, "testUser1") == 100
    with pytest.raises(InvalidState):
        await service.cancel_generation(storage, request.id, T0 + MINUTE)
    assert [e.type for e in await whole_ledger(storage, "testUser1")][:2] == [
        EntryType.REFUND,
        EntryType.DEDUCTION,
    ]


async def test_canceling_a_running_generation_is_an_invalid_state_and_refunds_nothing(
    storage: MemoryStorage,
) -> None:
    await create(storage)
    job = await claim(storage, "w-1")

    with pytest.raises(InvalidState, match="running"):
        await service.cancel_generation(storage, job.id, T0)

    assert await balance(storage, "testUser1") == 99


async def test_canceling_an_unknown_generation_is_not_found(storage: MemoryStorage) -> None:
    with pytest.raises(NotFound):
        await service.cancel_generation(storage, "no-such-id", T0)


async def test_listing_with_an_unknown_status_names_the_valid_ones(storage: MemoryStorage) -> None:
    with pytest.raises(InvalidInput, match="Valid values: pending, running"):
        await service.list_generations(storage, "testUser1", "lost", limit=10, cursor=None)


# -- jobs -------------------------------------------------------------------------------------
async def test_a_job_whose_worker_died_is_retried_then_failed_and_refunded(storage: MemoryStorage) -> None:
    await create(storage)
    now = T0
    for attempt in (1, 2):
        await claim(storage, f"w-{attempt}", now)
        now += LEASE + MINUTE
        assert await jobs.recover_expired_jobs(storage, now, max_attempts=2) == jobs.Recovery(
            attempt % 2, attempt // 2
        )

    assert await balance(storage, "testUser1") == 100
    assert list(await service.verify(storage)) == []


# -- credits ----------------------------------------------------------------------------------
async def test_a_grant_and_an_adjustment_move_the_balance_with_their_reason(storage: MemoryStorage) -> None:
    grant = await service.move_credits(storage, "testUser2", 5, "  promo  ", T0)
    adjustment = await service.move_credits(storage, "testUser2", -15, "chargeback", T0)

    assert (grant.type, grant.reason, grant.balance_after) == (EntryType.GRANT, "promo", 15)
    assert (adjustment.type, adjustment.balance_after) == (EntryType.ADJUSTMENT, 0)


@pytest.mark.parametrize(("amount", "reason"), [(0, "nothing"), (5, "   "), (5, "")])
async def test_a_zero_move_or_an_empty_reason_is_refused(
    storage: MemoryStorage, amount: int, reason: str
) -> None:
    with pytest.raises(InvalidInput):
        await service.move_credits(storage, "testUser2", amount, reason, T0)

    assert await balance(storage, "testUser2") == 10


async def test_an_adjustment_never_takes_a_balance_below_zero(storage: MemoryStorage) -> None:
    with pytest.raises(InsufficientCredits):
        await service.move_credits(storage, "testUser2", -11, "too much", T0)

    assert await balance(storage, "testUser2") == 10


async def test_a_credit_move_retried_with_its_key_happens_once(storage: MemoryStorage) -> None:
    first = await service.move_credits(storage, "testUser2", 5, "promo", T0, idempotency_key="grant-1")
    again = await service.move_credits(storage, "testUser2", 5, "promo", T0, idempotency_key="grant-1")

    assert again == first
    assert await balance(storage, "testUser2") == 15


async def test_users_are_created_once_with_their_opening_balance_and_a_key(storage: MemoryStorage) -> None:
    user, issued = await service.create_user(storage, "alice", 20, T0)

    assert (user.id, user.credits) == ("alice", 20)
    key = await service.authenticate(storage, issued.key)
    assert (key.user_id, key.id) == ("alice", issued.id)
    with pytest.raises(UserExists):
        await service.create_user(storage, "alice", 5, T0)


@pytest.mark.parametrize(("user_id", "credits"), [("bad/id", 5), ("", 5), ("alice", -1)])
async def test_a_user_with_a_bad_id_or_negative_credits_is_refused(
    storage: MemoryStorage, user_id: str, credits: int
) -> None:
    with pytest.raises(InvalidInput):
        await service.create_user(storage, user_id, credits, T0)


# -- keys -------------------------------------------------------------------------------------
async def test_a_revoked_key_no_longer_authenticates(storage: MemoryStorage) -> None:
    issued = await service.issue_key(storage, "testUser1", T0)
    key_id, key = issued.id, issued.key
    assert (await service.authenticate(storage, key)).id == key_id

    assert await storage.revoke_api_key(key_id, T0)

    with pytest.raises(Unauthenticated):
        await service.authenticate(storage, key)


@pytest.mark.parametrize("key", [None, "", "ig_not-a-key"])
async def test_a_missing_or_unknown_key_is_unauthenticated(storage: MemoryStorage, key: str | None) -> None:
    with pytest.raises(Unauthenticated):
        await service.authenticate(storage, key)


# -- the catalog ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "name", "cost", "message"),
    [
        ("flavors", "mint", None, "Unknown catalog kind"),
        ("styles", "pop art", 3, "Only sizes have a cost"),
        ("sizes", "huge", 3, "Invalid size"),
        ("sizes", "0x512", 3, "Invalid size"),
        ("sizes", "2048x2048", 0, "positive"),
        ("sizes", "2048x2048", None, "needs a cost"),
        ("styles", " padded", None, "Invalid name"),
    ],
)
async def test_catalog_edits_that_make_no_sense_are_refused(
    storage: MemoryStorage, kind: str, name: str, cost: int | None, message: str
) -> None:
    before = await storage.catalog()

    with pytest.raises(InvalidInput, match=message):
        await service.set_option(storage, kind, name, enabled=True, cost=cost)

    assert await storage.catalog() == before


async def test_a_new_size_with_its_cost_can_be_ordered_at_once(storage: MemoryStorage) -> None:
    await service.set_option(storage, "sizes", "2048x2048", enabled=True, cost=8)

    request, _ = await create(storage, {**BODY, "size": "2048x2048"})

    assert request.cost == 8


async def test_model_settings_change_only_what_is_given(storage: MemoryStorage) -> None:
    updated = await service.set_model(storage, "model-a", latency_ms=0)

    assert (updated.failure_rate, updated.latency_ms, updated.enabled) == (0.05, 0, True)
    assert await storage.model_settings("model-a") == updated


# -- reports ----------------------------------------------------------------------------------
async def test_a_report_counts_its_week_and_is_stored_under_its_id(storage: MemoryStorage) -> None:
    week = reports.iso_week("2026-W47")
    await create(storage)
    await create(storage, {**BODY, "size": "1024x1024"})

    document = await service.run_report(storage, week, week.end)

    assert (document["id"], document["totalRequests"]) == ("2026-W47", 2)
    assert await service.get_report(storage, "2026-W47") == document


@pytest.mark.parametrize(
    ("week", "message"),
    [("2026-W99", "week"), ("last week", "week")],
)
async def test_a_report_period_that_makes_no_sense_is_refused(week: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        service.parse_period(week, now=T0)


async def test_an_unknown_report_is_not_found(storage: MemoryStorage) -> None:
    with pytest.raises(NotFound):
        await service.get_report(storage, "1999-W01")
