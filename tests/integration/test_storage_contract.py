"""The storage contract: what every adapter behind `imagegen.ports.Storage` must do.

Each test goes through the port alone, never SQL nor the service layer, so every adapter passes this
same module. The `storage` fixture runs it in memory, on SQLite, on Firestore (the emulator) and, when
IMAGEGEN_TEST_POSTGRES_URL is set, on PostgreSQL; it holds the initial data set (testUser1: 100
credits, testUser2: 10; 512x512 costs 1, 1024x1024 3, 1024x1792 4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from imagegen.domain import reports
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    StaleConfig,
    TooManyRequests,
    UserExists,
    UserNotFound,
)
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.domain.users import User
from imagegen.domain.validation import text_problem
from imagegen.ports import Lease, Storage
from tests.integration.builders import (
    LEASE,
    T0,
    W47,
    balance,
    claim,
    enqueue,
    entries_for,
    finished,
    new_generation,
    requests_around_week_47,
    whole_ledger,
)

MINUTE = timedelta(minutes=1)


# -- users --------------------------------------------------------------------------------------
async def test_a_new_user_has_its_opening_balance_as_one_grant(storage: Storage) -> None:
    user = await storage.create_user("alice", 7, T0)

    assert user == User("alice", 7, T0)
    assert await storage.get_user("alice") == User("alice", 7, T0)
    [entry] = await whole_ledger(storage, "alice")
    assert (entry.type, entry.delta, entry.balance_after) == (EntryType.GRANT, 7, 7)


async def test_a_new_user_with_no_credits_has_an_empty_ledger(storage: Storage) -> None:
    await storage.create_user("bob", 0, T0)

    assert await balance(storage, "bob") == 0
    assert await whole_ledger(storage, "bob") == []


async def test_creating_a_user_twice_raises_user_exists_and_keeps_the_first(storage: Storage) -> None:
    await storage.create_user("alice", 7, T0)

    with pytest.raises(UserExists):
        await storage.create_user("alice", 500, T0 + MINUTE)

    assert await balance(storage, "alice") == 7
    assert len(await whole_ledger(storage, "alice")) == 1


async def test_getting_a_missing_user_returns_none(storage: Storage) -> None:
    assert await storage.get_user("nobody") is None


# -- moving credits -----------------------------------------------------------------------------
async def test_a_grant_adds_credits_and_records_the_balance_after(storage: Storage) -> None:
    entry = await storage.move_credits("testUser2", EntryType.GRANT, 15, "promo", T0)

    assert (entry.type, entry.delta, entry.credits, entry.balance_after) == (EntryType.GRANT, 15, 15, 25)
    assert entry.reason == "promo"
    assert await balance(storage, "testUser2") == 25
    assert (await whole_ledger(storage, "testUser2"))[0] == entry


async def test_a_negative_adjustment_takes_credits_away_down_to_exactly_zero(storage: Storage) -> None:
    entry = await storage.move_credits("testUser2", EntryType.ADJUSTMENT, -4, "chargeback", T0)
    assert (entry.delta, entry.credits, entry.balance_after) == (-4, -4, 6)

    last = await storage.move_credits("testUser2", EntryType.ADJUSTMENT, -6, "closing", T0)

    assert last.balance_after == 0
    assert await balance(storage, "testUser2") == 0


async def test_an_adjustment_below_zero_raises_insufficient_credits_and_writes_nothing(
    storage: Storage,
) -> None:
    before = await whole_ledger(storage, "testUser2")

    with pytest.raises(InsufficientCredits):
        await storage.move_credits("testUser2", EntryType.ADJUSTMENT, -11, "too much", T0)

    assert await balance(storage, "testUser2") == 10
    assert await whole_ledger(storage, "testUser2") == before


async def test_moving_credits_of_an_unknown_user_raises_user_not_found(storage: Storage) -> None:
    with pytest.raises(UserNotFound):
        await storage.move_credits("nobody", EntryType.GRANT, 5, "promo", T0)

    assert await storage.get_user("nobody") is None


# -- the ledger ---------------------------------------------------------------------------------
async def test_the_ledger_pages_newest_first_with_no_duplicates_and_no_gaps(storage: Storage) -> None:
    await storage.create_user("pager", 0, T0)
    # Half the entries share one timestamp: the order must still be the order they were written.
    moved = [
        await storage.move_credits("pager", EntryType.GRANT, n, f"grant {n}", T0 + MINUTE * min(n, 12))
        for n in range(1, 24)
    ]

    pages = []
    cursor = None
    while True:
        page = await storage.ledger("pager", 5, cursor)
        pages.append(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert [len(items) for items in pages] == [5, 5, 5, 5, 3]
    walked = [entry for items in pages for entry in items]
    assert [e.id for e in walked] == [e.id for e in reversed(moved)]
    running = 0
    for entry in reversed(walked):
        running += entry.delta
        assert entry.balance_after == running


async def test_a_ledger_page_that_ends_exactly_at_the_last_entry_has_no_next_cursor(
    storage: Storage,
) -> None:
    await storage.create_user("pager", 0, T0)
    for n in range(1, 5):
        await storage.move_credits("pager", EntryType.GRANT, n, "grant", T0)

    page = await storage.ledger("pager", 4, None)

    assert len(page.items) == 4
    assert page.next_cursor is None


@pytest.mark.parametrize("cursor", ["not-a-cursor", "-5", " 5", "5 ", "+5", "٥", "9" * 5000, str(2**63)])
async def test_a_malformed_ledger_cursor_is_invalid_input_on_every_storage(
    storage: Storage, cursor: str
) -> None:
    with pytest.raises(InvalidInput):
        await storage.ledger("testUser1", 5, cursor)


@pytest.mark.parametrize(
    "cursor",
    ["not-a-cursor", "MjAyNi0xMS0xNnxhYmM", "eHx5", "fHxh", "A" * 5000, "MjAyNi0xMS0xNlQwOTowMDowMFp8YS9i"],
)
async def test_a_malformed_list_cursor_is_invalid_input_on_every_storage(
    storage: Storage, cursor: str
) -> None:
    with pytest.raises(InvalidInput):
        await storage.list_requests("testUser1", None, 5, cursor)
    with pytest.raises(InvalidInput):
        await storage.list_reports(5, cursor)


# -- debit and enqueue --------------------------------------------------------------------------
async def test_debit_and_enqueue_debits_the_cost_and_writes_one_deduction_and_a_pending_request(
    storage: Storage,
) -> None:
    new = new_generation(size="1024x1024")

    request, created = await storage.debit_and_enqueue(new)

    assert created
    assert (request.id, request.status, request.cost, request.attempts) == (new.id, Status.PENDING, 3, 0)
    assert await storage.get_request(new.id) == request
    assert await balance(storage, "testUser1") == 97
    newest = (await whole_ledger(storage, "testUser1"))[0]
    assert (newest.type, newest.delta, newest.balance_after) == (EntryType.DEDUCTION, -3, 97)
    assert newest.generation_request_id == new.id
    assert await entries_for(storage, "testUser1", new.id) == {EntryType.DEDUCTION: 1}


async def test_debit_and_enqueue_can_spend_the_last_credit(storage: Storage) -> None:
    await storage.debit_and_enqueue(new_generation("testUser2", cost=10))

    assert await balance(storage, "testUser2") == 0


async def test_debit_and_enqueue_with_insufficient_credits_writes_nothing(storage: Storage) -> None:
    new = new_generation("testUser2", cost=11)
    before = await whole_ledger(storage, "testUser2")

    with pytest.raises(InsufficientCredits):
        await storage.debit_and_enqueue(new)

    assert await storage.get_request(new.id) is None
    assert (await storage.list_requests("testUser2", None, 10, None)).items == []
    assert await whole_ledger(storage, "testUser2") == before
    assert await balance(storage, "testUser2") == 10


async def test_debit_and_enqueue_for_an_unknown_user_raises_user_not_found(storage: Storage) -> None:
    new = new_generation("nobody")

    with pytest.raises(UserNotFound):
        await storage.debit_and_enqueue(new)

    assert await storage.get_request(new.id) is None
    assert await storage.get_user("nobody") is None


async def test_a_replay_with_the_same_key_and_body_returns_the_first_request_and_debits_once(
    storage: Storage,
) -> None:
    first, created = await storage.debit_and_enqueue(new_generation(key="k-1", size="1024x1024"))
    retry = new_generation(key="k-1", size="1024x1024", created_at=T0 + MINUTE)

    replayed, created_again = await storage.debit_and_enqueue(retry)

    assert (created, created_again) == (True, False)
    assert replayed == first
    assert await storage.get_request(retry.id) is None
    assert await balance(storage, "testUser1") == 97
    assert await entries_for(storage, "testUser1", first.id) == {EntryType.DEDUCTION: 1}


async def test_a_key_reused_with_a_different_body_is_an_idempotency_conflict(storage: Storage) -> None:
    first, _ = await storage.debit_and_enqueue(new_generation(key="k-1", fingerprint="body-1"))
    other = new_generation(key="k-1", fingerprint="body-2", size="1024x1792")

    with pytest.raises(IdempotencyConflict):
        await storage.debit_and_enqueue(other)

    assert await storage.get_request(other.id) is None
    assert await balance(storage, "testUser1") == 99


async def test_the_same_key_used_by_two_users_makes_two_requests(storage: Storage) -> None:
    one, created_one = await storage.debit_and_enqueue(new_generation("testUser1", key="shared"))
    two, created_two = await storage.debit_and_enqueue(new_generation("testUser2", key="shared"))

    assert created_one and created_two
    assert one.id != two.id
    assert (await balance(storage, "testUser1"), await balance(storage, "testUser2")) == (99, 9)


async def test_a_replay_returns_the_first_request_even_when_the_balance_no_longer_covers_it(
    storage: Storage,
) -> None:
    first, _ = await storage.debit_and_enqueue(new_generation("testUser2", key="k-all", cost=10))

    replayed, created = await storage.debit_and_enqueue(new_generation("testUser2", key="k-all", cost=10))

    assert (replayed, created) == (first, False)
    assert await balance(storage, "testUser2") == 0


async def test_a_replay_after_the_request_was_canceled_returns_it_canceled_and_debits_nothing(
    storage: Storage,
) -> None:
    first, _ = await storage.debit_and_enqueue(new_generation(key="k-1"))
    await storage.cancel_and_refund(first.id, T0)

    replayed, created = await storage.debit_and_enqueue(new_generation(key="k-1"))

    assert (replayed.id, replayed.status, created) == (first.id, Status.CANCELED, False)
    assert await balance(storage, "testUser1") == 100


async def test_a_models_settings_read_alone_match_the_catalog_and_an_edit_shows_at_once(
    storage: Storage,
) -> None:
    assert await storage.model_settings("model-a") == (await storage.catalog()).models["model-a"]
    assert await storage.model_settings("model-z") is None

    await storage.put_model(ModelSettings("model-a", failure_rate=0.5, latency_ms=7, enabled=False))

    assert await storage.model_settings("model-a") == ModelSettings("model-a", 0.5, 7, False)
    assert (await storage.catalog()).models["model-a"] == ModelSettings("model-a", 0.5, 7, False)


BINDING = (
    {
        "engine": "comfyui",
        "settings": {"base_url": "http://gpu-1:8188", "workflow": {"1": {"inputs": {"t": "{{prompt}}"}}}},
    },
    {"engine": "openai", "settings": {"model": "dall-e-3", "api_key_env": "OPENAI_API_KEY", "resize": True}},
)


async def test_a_models_binding_and_prices_round_trip_and_unbinding_leaves_nothing(storage: Storage) -> None:
    bound = ModelSettings("model-a", 0.2, 9, True, deployments=BINDING, prices={"512x512": 2, "1024x1024": 7})
    before = await storage.config_version()

    await storage.put_model(bound)

    assert await storage.config_version() != before  # a binding or price edit is a catalog edit
    assert await storage.model_settings("model-a") == bound
    assert (await storage.catalog()).models["model-a"] == bound
    assert (await storage.catalog()).cost_of("512x512", "model-a") == 2
    assert (await storage.catalog()).cost_of("1024x1792", "model-a") == 4  # no price of its own
    assert (await storage.catalog()).cost_of("512x512", "model-b") == 1

    await storage.put_model(ModelSettings("model-a", 0.2, 9, True))

    assert await storage.model_settings("model-a") == ModelSettings("model-a", 0.2, 9, True)
    assert (await storage.catalog()).cost_of("512x512", "model-a") == 1


async def test_concurrent_edits_of_one_model_each_keep_the_others_fields(storage: Storage) -> None:
    # Each edit changes one field; a read-modify-write outside one transaction loses some of them.
    fields = [
        {"failure_rate": 0.5},
        {"latency_ms": 7},
        {"deployments": BINDING},
        {"prices": {"512x512": 2}},
        {"enabled": False},
    ]  # five at once: on Firestore, more on one document only measure the emulator's contention

    def setting(changes: dict[str, object]) -> Callable[[ModelSettings | None], ModelSettings]:
        def change(current: ModelSettings | None) -> ModelSettings:
            assert current is not None
            return replace(current, **changes)  # type: ignore[arg-type]

        return change

    await asyncio.gather(*(storage.update_model("model-a", setting(f)) for f in fields))

    assert await storage.model_settings("model-a") == ModelSettings(
        "model-a", 0.5, 7, False, deployments=BINDING, prices={"512x512": 2}
    )


async def test_updating_a_model_reads_none_for_a_new_one_and_a_raise_writes_nothing(storage: Storage) -> None:
    version = await storage.config_version()

    def refuse(current: ModelSettings | None) -> ModelSettings:
        raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        await storage.update_model("model-a", refuse)
    unchanged = await storage.update_model("model-a", lambda current: current or ModelSettings("x"))
    assert await storage.config_version() == version  # nothing changed: nothing written
    created = await storage.update_model(
        "model-new", lambda current: current or ModelSettings("model-new", 0.1)
    )

    assert unchanged == await storage.model_settings("model-a")
    assert created == await storage.model_settings("model-new") == ModelSettings("model-new", 0.1)
    assert await storage.config_version() != version


async def test_a_users_requests_page_newest_first_and_filter_by_status(storage: Storage) -> None:
    # Three share a timestamp: the cursor must still neither skip nor repeat any of them.
    made = [await enqueue(storage, created_at=T0 + MINUTE * min(n, 3)) for n in range(7)]
    await enqueue(storage, "testUser2")
    await storage.cancel_and_refund(made[0].id, T0)

    walked, cursor = [], None
    while True:
        page = await storage.list_requests("testUser1", None, 2, cursor)
        walked.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert sorted(r.id for r in walked) == sorted(r.id for r in made)
    assert [r.created_at for r in walked] == sorted((r.created_at for r in made), reverse=True)
    canceled = await storage.list_requests("testUser1", Status.CANCELED, 10, None)
    assert [r.id for r in canceled.items] == [made[0].id]


# -- the database ---------------------------------------------------------------------------------
async def test_listen_returns_at_once_where_no_other_process_can_be_heard(storage: Storage) -> None:
    if getattr(getattr(storage, "dialect", None), "name", None) == "postgresql":
        pytest.skip("PostgreSQL hears other processes (test_postgres_jobs.py)")

    async with asyncio.timeout(5):
        assert await storage.listen(lambda: None, lambda _: None) is None


async def test_ping_answers(storage: Storage) -> None:
    assert await storage.ping() is None


# -- the refusal order, decided in the domain (domain.ledger.debit_refusal) -----------------------
async def test_a_user_out_of_credits_and_at_the_in_flight_limit_gets_the_same_refusal_everywhere(
    storage: Storage,
) -> None:
    await storage.debit_and_enqueue(replace(new_generation("testUser2", cost=10), max_in_flight=1))
    both = replace(new_generation("testUser2"), max_in_flight=1)  # no credits left, and one in flight

    with pytest.raises(TooManyRequests) as refused:
        await storage.debit_and_enqueue(both)

    assert refused.value.details["inFlight"] == 1 and refused.value.details["limit"] == 1
    assert await storage.get_request(both.id) is None
    assert await balance(storage, "testUser2") == 0


async def test_a_user_at_the_in_flight_limit_with_credits_is_refused_and_can_create_once_one_ends(
    storage: Storage,
) -> None:
    first = await enqueue(storage, "testUser2")
    second = replace(new_generation("testUser2"), max_in_flight=1)

    with pytest.raises(TooManyRequests):
        await storage.debit_and_enqueue(second)
    assert await storage.cancel_and_refund(first.id, T0)
    _, created = await storage.debit_and_enqueue(second)

    assert created and await balance(storage, "testUser2") == 9


async def test_a_user_under_the_limit_but_out_of_credits_is_refused_for_credits(storage: Storage) -> None:
    over = replace(new_generation("testUser2", cost=11), max_in_flight=5)

    with pytest.raises(InsufficientCredits):
        await storage.debit_and_enqueue(over)


# -- the configuration version: a create priced from an older catalog is refused -----------------
async def test_the_snapshot_is_the_current_version_and_catalog(storage: Storage) -> None:
    version, catalog = await storage.config_snapshot()

    assert version == await storage.config_version()
    assert catalog == await storage.catalog()


async def test_a_create_priced_under_the_current_version_is_debited(storage: Storage) -> None:
    version = await storage.config_version()

    request, created = await storage.debit_and_enqueue(new_generation(), version)

    assert created and request.status is Status.PENDING
    assert await balance(storage, "testUser1") == 99


@pytest.mark.parametrize("edit", ["model", "option", "revocation"])
async def test_every_catalog_edit_and_key_revocation_changes_the_version_and_a_stale_create_is_refused(
    storage: Storage, edit: str
) -> None:
    before = await storage.config_version()
    key = await storage.add_api_key("k-stale", "hash-stale", "testUser1", T0)
    assert await storage.config_version() == before  # a new key makes no cached copy wrong
    if edit == "model":
        await storage.put_model(ModelSettings("model-a", failure_rate=0.1, latency_ms=5, enabled=True))
    elif edit == "option":
        await storage.put_option("styles", "anime", enabled=False)
    else:
        assert await storage.revoke_api_key(key.id, T0)
    new = new_generation()

    assert await storage.config_version() != before
    with pytest.raises(StaleConfig):
        await storage.debit_and_enqueue(new, before)
    assert await storage.get_request(new.id) is None
    assert await balance(storage, "testUser1") == 100
    _, created = await storage.debit_and_enqueue(new, await storage.config_version())
    assert created


# -- keys: listed with their ids, creation, last use and revocation -------------------------------
async def test_a_users_keys_are_listed_oldest_first_with_their_revocation_and_every_key_with_none(
    storage: Storage,
) -> None:
    first = await storage.add_api_key("k-first", "hash-first", "testUser2", T0)
    second = await storage.add_api_key("k-second", "hash-second", "testUser2", T0 + MINUTE)
    await storage.add_api_key("k-admin", "hash-admin", None, T0)
    assert await storage.revoke_api_key(first.id, T0 + 2 * MINUTE)

    listed = [k for k in await storage.list_api_keys("testUser2") if k.id.startswith("k-")]
    every = {k.id: k for k in await storage.list_api_keys(None)}

    assert [(k.id, k.user_id, k.created_at, k.revoked_at) for k in listed] == [
        ("k-first", "testUser2", T0, T0 + 2 * MINUTE),
        ("k-second", "testUser2", T0 + MINUTE, None),
    ]
    assert second.id in every and every["k-admin"].is_admin
    assert {k.user_id for k in every.values()} >= {None, "testUser1", "testUser2"}  # the first start's
    assert await storage.list_api_keys("nobody") == []


async def test_a_keys_last_use_moves_forward_only_and_changes_no_configuration(storage: Storage) -> None:
    key = await storage.add_api_key("k-used", "hash-used", "testUser1", T0)
    version = await storage.config_version()

    await storage.record_key_uses({key.id: T0 + 2 * MINUTE, "k-unknown": T0})
    await storage.record_key_uses({key.id: T0 + MINUTE})  # an older note, from a slower process

    found = await storage.find_api_key("hash-used")
    assert found is not None and found.last_used_at == T0 + 2 * MINUTE
    assert await storage.config_version() == version  # no cached create is made stale by a use
    assert await storage.revoke_api_key(key.id, T0 + 3 * MINUTE)
    await storage.record_key_uses({key.id: T0 + 4 * MINUTE})
    assert await storage.find_api_key("hash-used") is None  # a use after revocation revives nothing
    (listed,) = [k for k in await storage.list_api_keys("testUser1") if k.id == key.id]
    assert (listed.revoked_at, listed.last_used_at) == (T0 + 3 * MINUTE, T0 + 4 * MINUTE)


# -- a claimed create: the creator runs the job (a Cloud Function) --------------------------------
async def test_a_claimed_create_is_running_under_the_lease_and_no_worker_can_claim_it(
    storage: Storage,
) -> None:
    new = replace(
        new_generation(), webhook="https://hooks.example.com/x", webhook_events=frozenset({"start"})
    )

    request, created = await storage.debit_and_enqueue(new, claim=Lease("fn-1", T0 + LEASE))

    assert created
    assert (request.status, request.attempts, request.started_at) == (Status.RUNNING, 1, T0)
    assert await storage.get_request(new.id) == request
    assert await storage.claim_job(Lease("w-1", T0 + LEASE), T0) is None
    assert await balance(storage, "testUser1") == 99
    [started] = await storage.claim_webhooks(T0, T0 + LEASE, 10)
    assert (started.event, started.generation_request_id) == ("start", new.id)
    assert await storage.expired_jobs(T0 + LEASE - timedelta(seconds=1)) == []
    assert [j.id for j in await storage.expired_jobs(T0 + LEASE + timedelta(seconds=1))] == [new.id]
    assert not await storage.complete(new.id, "w-1", "/images/x.png", T0 + MINUTE)
    assert await storage.complete(new.id, "fn-1", "/images/x.png", T0 + MINUTE)
    assert await storage.violations() == []


async def test_a_claimed_create_replayed_returns_the_first_request_and_debits_once(storage: Storage) -> None:
    first, _ = await storage.debit_and_enqueue(new_generation(key="k-fn"), claim=Lease("fn-1", T0 + LEASE))

    again, created = await storage.debit_and_enqueue(
        new_generation(key="k-fn"), claim=Lease("fn-2", T0 + LEASE)
    )

    assert (again.id, again.status, created) == (first.id, Status.RUNNING, False)
    assert await balance(storage, "testUser1") == 99
    assert not await storage.complete(first.id, "fn-2", "/images/x.png", T0)  # the first creator's job


async def test_a_claimed_create_is_refused_as_any_create(storage: Storage) -> None:
    new = new_generation("testUser2", cost=11)

    with pytest.raises(InsufficientCredits):
        await storage.debit_and_enqueue(new, claim=Lease("fn-1", T0 + LEASE))

    assert await storage.get_request(new.id) is None


# -- jobs: claiming -----------------------------------------------------------------------------
async def test_claim_returns_the_oldest_pending_job_and_marks_it_running(storage: Storage) -> None:
    later = await enqueue(storage, created_at=T0 + 2 * MINUTE)
    oldest = await enqueue(storage, created_at=T0)
    await enqueue(storage, created_at=T0 + MINUTE)
    now = T0 + 5 * MINUTE

    job = await storage.claim_job(Lease("w-1", now + LEASE), now)

    assert job is not None and job.id == oldest.id
    assert (job.status, job.attempts, job.started_at) == (Status.RUNNING, 1, now)
    assert await storage.get_request(oldest.id) == job
    assert (await storage.get_request(later.id)).status is Status.PENDING  # type: ignore[union-attr]


async def test_a_claimed_job_holds_a_lease_until_the_given_time(storage: Storage) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1", T0)

    assert await storage.expired_jobs(T0 + LEASE - timedelta(seconds=1)) == []
    assert [j.id for j in await storage.expired_jobs(T0 + LEASE + timedelta(seconds=1))] == [job.id]


async def test_two_claims_never_return_the_same_job(storage: Storage) -> None:
    first = await enqueue(storage, created_at=T0)
    second = await enqueue(storage, created_at=T0 + MINUTE)

    claimed = [(await claim(storage, "w-1")).id, (await claim(storage, "w-2")).id]

    assert claimed == [first.id, second.id]
    assert await storage.claim_job(Lease("w-3", T0 + LEASE), T0) is None


async def test_claims_made_at_once_take_each_pending_job_once_and_the_rest_find_none(
    storage: Storage,
) -> None:
    pending = {(await enqueue(storage, created_at=T0 + n * MINUTE)).id for n in range(5)}

    claimed = await asyncio.gather(*(storage.claim_job(Lease(f"w-{n}", T0 + LEASE), T0) for n in range(12)))

    taken = [job.id for job in claimed if job is not None]
    assert sorted(taken) == sorted(pending)  # each one once: no duplicate
    assert claimed.count(None) == 7
    for n, job in enumerate(claimed):  # each under the lease of the claim that returned it
        if job is not None:
            assert await storage.complete(job.id, f"w-{n}", "/images/x.png", T0 + MINUTE)


# -- jobs: finishing ----------------------------------------------------------------------------
async def test_only_the_lease_owner_can_complete_a_job(storage: Storage) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1")

    assert not await storage.complete(job.id, "w-2", "/images/x.png", T0 + MINUTE)
    assert (await storage.get_request(job.id)).status is Status.RUNNING  # type: ignore[union-attr]

    assert await storage.complete(job.id, "w-1", "/images/x.png", T0 + MINUTE)
    done = await storage.get_request(job.id)
    assert done is not None
    assert (done.status, done.image_url, done.completed_at) == (
        Status.COMPLETED,
        "/images/x.png",
        T0 + MINUTE,
    )
    assert not await storage.complete(job.id, "w-1", "/images/y.png", T0 + 2 * MINUTE)
    assert await entries_for(storage, "testUser1", job.id) == {EntryType.DEDUCTION: 1}
    assert await storage.violations() == []


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ({"start", "completed"}, ["start", "completed"]),
        ({"start"}, ["start"]),
        ({"completed"}, ["completed"]),
    ],
)
async def test_a_job_with_a_webhook_queues_a_delivery_for_each_event_it_asked_for(
    storage: Storage, events: set[str], expected: list[str]
) -> None:
    new = replace(new_generation(), webhook="https://hooks.example.com/x", webhook_events=frozenset(events))
    request, _ = await storage.debit_and_enqueue(new)
    job = await claim(storage, "w-1")
    started = await storage.claim_webhooks(T0, T0 + LEASE, 10)
    for delivery in started:
        await storage.webhook_delivered(delivery.id, T0)

    assert await storage.complete(job.id, "w-1", "/images/x.png", T0 + MINUTE)
    ended = await storage.claim_webhooks(T0 + MINUTE, T0 + MINUTE + LEASE, 10)

    assert [d.event for d in started + ended] == expected
    assert {d.generation_request_id for d in started + ended} == {request.id}
    assert all(d.url == "https://hooks.example.com/x" for d in started + ended)
    done = await storage.get_request(request.id)
    assert done is not None and done.status is Status.COMPLETED
    assert await storage.violations() == []


async def test_completing_a_job_without_a_webhook_queues_no_delivery(storage: Storage) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1")

    assert await storage.complete(job.id, "w-1", "/images/x.png", T0 + MINUTE)

    assert await storage.claim_webhooks(T0 + MINUTE, T0 + MINUTE + LEASE, 10) == []


async def test_ends_of_one_job_asked_at_once_end_it_once_with_at_most_one_refund(storage: Storage) -> None:
    for _ in range(3):
        await enqueue(storage, size="1024x1024")
    jobs = [await claim(storage, f"w-{n}") for n in range(3)]
    now = T0 + MINUTE

    ended = await asyncio.gather(
        *(
            end
            for n, job in enumerate(jobs)
            for end in (
                storage.complete(job.id, f"w-{n}", f"/images/{job.id}.png", now),
                storage.fail_and_refund(job.id, "model exploded", now, worker_id=f"w-{n}"),
                storage.complete(job.id, f"w-{n}", f"/images/{job.id}-again.png", now),
            )
        )
    )

    assert [ended[3 * n : 3 * n + 3].count(True) for n in range(3)] == [1, 1, 1]
    refunds = 0
    for job in jobs:
        done = await storage.get_request(job.id)
        assert done is not None and done.status in (Status.COMPLETED, Status.FAILED)
        entries = await entries_for(storage, "testUser1", job.id)
        refunds += entries.get(EntryType.REFUND, 0)
        assert entries.get(EntryType.REFUND, 0) == (1 if done.status is Status.FAILED else 0)
    assert await balance(storage, "testUser1") == 100 - 9 + 3 * refunds
    assert await storage.violations() == []


async def test_a_pending_job_can_be_neither_completed_nor_failed(storage: Storage) -> None:
    request = await enqueue(storage)

    assert not await storage.complete(request.id, "w-1", "/images/x.png", T0)
    assert not await storage.fail_and_refund(request.id, "never ran", T0)
    assert (await storage.get_request(request.id)).status is Status.PENDING  # type: ignore[union-attr]


async def test_fail_and_refund_writes_exactly_one_refund_and_a_second_call_returns_false(
    storage: Storage,
) -> None:
    await enqueue(storage, size="1024x1792")
    job = await claim(storage, "w-1")

    assert await storage.fail_and_refund(job.id, "model exploded", T0 + MINUTE, worker_id="w-1")
    assert not await storage.fail_and_refund(job.id, "model exploded", T0 + MINUTE, worker_id="w-1")
    assert not await storage.fail_and_refund(job.id, "model exploded", T0 + MINUTE)

    failed = await storage.get_request(job.id)
    assert failed is not None
    assert (failed.status, failed.error) == (Status.FAILED, "model exploded")
    assert await balance(storage, "testUser1") == 100
    assert await entries_for(storage, "testUser1", job.id) == {EntryType.DEDUCTION: 1, EntryType.REFUND: 1}
    refund = (await whole_ledger(storage, "testUser1"))[0]
    assert (refund.type, refund.delta, refund.balance_after) == (EntryType.REFUND, 4, 100)
    assert await storage.violations() == []


async def test_fail_and_refund_by_a_worker_that_does_not_hold_the_lease_changes_nothing(
    storage: Storage,
) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1")

    assert not await storage.fail_and_refund(job.id, "not mine", T0, worker_id="w-2")

    assert (await storage.get_request(job.id)).status is Status.RUNNING  # type: ignore[union-attr]
    assert await balance(storage, "testUser1") == 99


async def test_a_completed_job_can_be_neither_failed_nor_canceled(storage: Storage) -> None:
    done = await finished(storage, Status.COMPLETED, T0)

    assert not await storage.fail_and_refund(done.id, "too late", T0 + MINUTE)
    assert not await storage.cancel_and_refund(done.id, T0 + MINUTE)

    assert (await storage.get_request(done.id)).status is Status.COMPLETED  # type: ignore[union-attr]
    assert await entries_for(storage, "testUser1", done.id) == {EntryType.DEDUCTION: 1}


# -- jobs: canceling ----------------------------------------------------------------------------
async def test_cancel_refunds_a_pending_request_exactly_once(storage: Storage) -> None:
    request = await enqueue(storage, size="1024x1024")

    assert await storage.cancel_and_refund(request.id, T0 + MINUTE)
    assert not await storage.cancel_and_refund(request.id, T0 + 2 * MINUTE)

    assert (await storage.get_request(request.id)).status is Status.CANCELED  # type: ignore[union-attr]
    assert await balance(storage, "testUser1") == 100
    assert await entries_for(storage, "testUser1", request.id) == {
        EntryType.DEDUCTION: 1,
        EntryType.REFUND: 1,
    }
    assert await storage.claim_job(Lease("w-1", T0 + LEASE), T0) is None


async def test_a_running_request_canceled_is_refunded_once_and_its_worker_cannot_end_it(
    storage: Storage,
) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1")

    assert await storage.cancel_and_refund(job.id, T0)

    assert (await storage.get_request(job.id)).status is Status.CANCELED  # type: ignore[union-attr]
    assert not await storage.complete(job.id, "w-1", "/images/late.png", T0 + MINUTE)
    assert not await storage.fail_and_refund(job.id, "late", T0 + MINUTE, worker_id="w-1")
    assert not await storage.set_progress(job.id, "w-1", 0.5)
    assert not await storage.cancel_and_refund(job.id, T0 + MINUTE)
    assert await storage.expired_jobs(T0 + 10 * LEASE) == []
    assert await balance(storage, "testUser1") == 100
    assert await entries_for(storage, "testUser1", job.id) == {EntryType.DEDUCTION: 1, EntryType.REFUND: 1}
    assert await storage.violations() == []


async def test_canceling_an_unknown_request_returns_false(storage: Storage) -> None:
    assert not await storage.cancel_and_refund("no-such-request", T0)


# -- jobs: leases and recovery ------------------------------------------------------------------
async def test_a_heartbeat_keeps_a_job_from_expiring(storage: Storage) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1", T0)

    assert await storage.extend_leases({job.id: "w-1"}, T0 + 10 * MINUTE) == 1
    assert await storage.extend_leases({job.id: "w-2"}, T0 + 20 * MINUTE) == 0

    assert await storage.expired_jobs(T0 + 5 * MINUTE) == []
    assert [j.id for j in await storage.expired_jobs(T0 + 11 * MINUTE)] == [job.id]


async def test_a_heartbeat_extends_only_the_request_and_worker_pairs_it_names(storage: Storage) -> None:
    await enqueue(storage, created_at=T0)
    await enqueue(storage, created_at=T0 + MINUTE)
    taken_over = await claim(storage, "w-b", T0)  # w-a believes it still runs this one
    own = await claim(storage, "w-b", T0)

    extended = await storage.extend_leases({taken_over.id: "w-a", own.id: "w-b"}, T0 + 10 * MINUTE)

    assert extended == 1
    assert [j.id for j in await storage.expired_jobs(T0 + 5 * MINUTE)] == [taken_over.id]


async def test_requeue_hands_an_expired_job_back_to_the_queue_only_after_its_lease_ran_out(
    storage: Storage,
) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1", T0)

    assert not await storage.requeue(job.id, T0 + LEASE - timedelta(seconds=1))
    assert await storage.requeue(job.id, T0 + LEASE + timedelta(seconds=1))

    assert (await storage.get_request(job.id)).status is Status.PENDING  # type: ignore[union-attr]
    again = await claim(storage, "w-2", T0 + 2 * MINUTE)
    assert (again.id, again.attempts) == (job.id, 2)


async def test_a_job_whose_lease_still_runs_is_neither_requeued_nor_failed_as_expired(
    storage: Storage,
) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1", T0)

    assert await storage.expired_jobs(T0 + MINUTE / 2) == []
    assert not await storage.requeue(job.id, T0 + MINUTE / 2)
    assert not await storage.fail_and_refund(job.id, "lease expired", T0 + MINUTE / 2, lease_expired=True)
    assert (await storage.get_request(job.id)).status is Status.RUNNING  # type: ignore[union-attr]


async def test_a_late_complete_by_a_worker_whose_lease_was_taken_over_returns_false(
    storage: Storage,
) -> None:
    await enqueue(storage)
    slow = await claim(storage, "w-slow", T0)
    later = T0 + LEASE + MINUTE
    assert [j.id for j in await storage.expired_jobs(later)] == [slow.id]
    assert await storage.requeue(slow.id, later)
    await claim(storage, "w-fast", later)

    assert not await storage.complete(slow.id, "w-slow", "/images/slow.png", later)
    assert not await storage.fail_and_refund(slow.id, "slow failed", later, worker_id="w-slow")
    assert await storage.complete(slow.id, "w-fast", "/images/fast.png", later)

    done = await storage.get_request(slow.id)
    assert done is not None
    assert (done.status, done.image_url) == (Status.COMPLETED, "/images/fast.png")
    assert await entries_for(storage, "testUser1", slow.id) == {EntryType.DEDUCTION: 1}
    assert await storage.violations() == []


async def test_a_late_complete_after_the_expired_job_failed_returns_false(storage: Storage) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-slow", T0)
    assert await storage.fail_and_refund(job.id, "lease expired", T0 + LEASE + MINUTE, lease_expired=True)

    assert not await storage.complete(job.id, "w-slow", "/images/slow.png", T0 + 2 * LEASE)

    assert (await storage.get_request(job.id)).status is Status.FAILED  # type: ignore[union-attr]
    assert await balance(storage, "testUser1") == 100
    assert await storage.violations() == []


# -- reports ------------------------------------------------------------------------------------


async def test_group_counts_cover_the_half_open_period(storage: Storage) -> None:
    await requests_around_week_47(storage)

    groups = await storage.group_counts(W47.start, W47.end)

    counted = {(g.model, g.style, g.color, g.size, g.status): (g.count, g.cost) for g in groups}
    assert counted == {
        ("model-a", "anime", "vibrant", "1024x1024", "completed"): (1, 3),
        ("model-b", "anime", "vibrant", "512x512", "failed"): (1, 1),
        ("model-a", "anime", "vibrant", "512x512", "completed"): (1, 1),
        ("model-a", "sketch", "vibrant", "512x512", "canceled"): (1, 1),
        ("model-a", "anime", "neon", "512x512", "pending"): (1, 1),
    }
    assert await storage.unique_users(W47.start, W47.end) == 2


async def test_a_period_ending_where_the_next_starts_shares_no_request(storage: Storage) -> None:
    await requests_around_week_47(storage)
    before = (W47.start - timedelta(days=7), W47.start)
    after = (W47.end, W47.end + timedelta(days=7))

    assert sum(g.count for g in await storage.group_counts(*before)) == 1
    assert sum(g.count for g in await storage.group_counts(*after)) == 1
    assert await storage.unique_users(*after) == 1


async def test_an_empty_period_has_no_groups_and_no_users(storage: Storage) -> None:
    assert await storage.group_counts(W47.start, W47.end) == []
    assert await storage.unique_users(W47.start, W47.end) == 0


LOOSE = reports.Thresholds(min_requests=1, min_key_requests=1)


async def test_the_generation_time_histogram_counts_completed_jobs_per_model_and_bucket(
    storage: Storage,
) -> None:
    for seconds, model in ((0.2, "model-a"), (0.4, "model-a"), (1.7, "model-a"), (0.3, "model-b")):
        request = await enqueue(storage, model=model, created_at=W47.start)
        job = await claim(storage, "w-1", W47.start)
        assert job.id == request.id
        assert await storage.complete(job.id, "w-1", "/images/x.png", W47.start + timedelta(seconds=seconds))
    await finished(storage, Status.FAILED, W47.start)  # only completed jobs count
    await finished(storage, Status.COMPLETED, W47.end)  # outside the period

    histogram = await storage.generation_time_histogram(W47.start, W47.end, 500)

    assert histogram == {"model-a": [(0, 2), (3, 1)], "model-b": [(0, 1)]}


# -- the scheduler ---------------------------------------------------------------------------------
async def test_a_scheduled_period_is_claimed_once_taken_over_when_stale_and_finished(
    storage: Storage,
) -> None:
    assert await storage.last_scheduled_run() is None
    assert await storage.claim_scheduled_run("2026-W46", "a", T0, stale_before=T0 - MINUTE)
    assert not await storage.claim_scheduled_run("2026-W46", "b", T0, stale_before=T0 - MINUTE)
    assert await storage.last_scheduled_run() is None  # claimed, not finished

    later = T0 + 10 * MINUTE  # "a" died: its claim is older than stale_before
    assert await storage.claim_scheduled_run("2026-W46", "b", later, stale_before=later - MINUTE)
    await storage.finish_scheduled_run("2026-W46", later)

    assert not await storage.claim_scheduled_run("2026-W46", "c", later + LEASE, stale_before=later + LEASE)
    assert await storage.last_scheduled_run() == "2026-W46"
    assert await storage.claim_scheduled_run("2026-W47", "c", later, stale_before=later - MINUTE)
    assert await storage.last_scheduled_run() == "2026-W46"


# -- the initial data ------------------------------------------------------------------------------
async def test_the_initial_data_is_loaded_once(storage: Storage) -> None:
    catalog = await storage.catalog()

    again = await storage.load_initial_data(catalog, {"testUser1": 5, "newcomer": 7}, [], T0)

    assert again is False
    assert await balance(storage, "testUser1") == 100
    assert await storage.get_user("newcomer") is None


# -- text every backend stores alike (domain.validation.text_problem) -----------------------------
# Every kind of character the domain lets through: controls, DEL, the last BMP and astral code
# points, combining marks, right-to-left text, emoji with joiners, quotes and backslashes.
STORABLE_TEXT = (
    "".join(chr(c) for c in range(1, 32))
    + "\x7f\x80\u00a0\u200b\u202e\u0301\ufeff\ufffd\uffff\U0001f469\u200d\U0001f4bb\U0010ffff"
    + "שלום 'quotes' \"double\" \\back\\slash %s ?:; -- /*"
)


async def test_every_character_the_domain_accepts_is_stored_and_read_back_unchanged(storage: Storage) -> None:
    assert text_problem("prompt", STORABLE_TEXT) is None
    new = new_generation()
    new = replace(new, spec=replace(new.spec, prompt=STORABLE_TEXT))
    request, _ = await storage.debit_and_enqueue(new)
    assert request.prompt == STORABLE_TEXT
    assert (await storage.get_request(new.id)).prompt == STORABLE_TEXT  # type: ignore[union-attr]

    entry = await storage.move_credits("testUser2", EntryType.GRANT, 3, STORABLE_TEXT, T0)
    assert entry.reason == STORABLE_TEXT
    assert (await whole_ledger(storage, "testUser2"))[0].reason == STORABLE_TEXT
