"""The storage contract: what every adapter behind `imagegen.ports.Storage` must do.

Each test goes through the port (or the service and job functions written against it), never SQL, so
the Firestore adapter can pass this same module. The `storage` fixture runs it on SQLite and, when
IMAGEGEN_TEST_POSTGRES_URL is set, on PostgreSQL; it holds the initial data set (testUser1: 100
credits, testUser2: 10; 512x512 costs 1, 1024x1024 3, 1024x1792 4).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from imagegen import jobs, service
from imagegen.domain import reports
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    InvalidState,
    NotFound,
    UserExists,
    UserNotFound,
)
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.domain.users import User
from imagegen.domain.validation import text_problem
from imagegen.ports import Storage
from tests.integration.builders import (
    LEASE,
    T0,
    balance,
    claim,
    enqueue,
    entries_for,
    finished,
    new_generation,
    whole_ledger,
)

MINUTE = timedelta(minutes=1)


# -- users --------------------------------------------------------------------------------------
def test_a_new_user_has_its_opening_balance_as_one_grant(storage: Storage) -> None:
    user = storage.create_user("alice", 7, T0)

    assert user == User("alice", 7, T0)
    assert storage.get_user("alice") == User("alice", 7, T0)
    [entry] = whole_ledger(storage, "alice")
    assert (entry.type, entry.delta, entry.balance_after) == (EntryType.GRANT, 7, 7)


def test_a_new_user_with_no_credits_has_an_empty_ledger(storage: Storage) -> None:
    storage.create_user("bob", 0, T0)

    assert balance(storage, "bob") == 0
    assert whole_ledger(storage, "bob") == []


def test_creating_a_user_twice_raises_user_exists_and_keeps_the_first(storage: Storage) -> None:
    storage.create_user("alice", 7, T0)

    with pytest.raises(UserExists):
        storage.create_user("alice", 500, T0 + MINUTE)

    assert balance(storage, "alice") == 7
    assert len(whole_ledger(storage, "alice")) == 1


def test_getting_a_missing_user_returns_none(storage: Storage) -> None:
    assert storage.get_user("nobody") is None


# -- moving credits -----------------------------------------------------------------------------
def test_a_grant_adds_credits_and_records_the_balance_after(storage: Storage) -> None:
    entry = storage.move_credits("testUser2", EntryType.GRANT, 15, "promo", T0)

    assert (entry.type, entry.delta, entry.credits, entry.balance_after) == (EntryType.GRANT, 15, 15, 25)
    assert entry.reason == "promo"
    assert balance(storage, "testUser2") == 25
    assert whole_ledger(storage, "testUser2")[0] == entry


def test_a_negative_adjustment_takes_credits_away_down_to_exactly_zero(storage: Storage) -> None:
    entry = storage.move_credits("testUser2", EntryType.ADJUSTMENT, -4, "chargeback", T0)
    assert (entry.delta, entry.credits, entry.balance_after) == (-4, -4, 6)

    last = storage.move_credits("testUser2", EntryType.ADJUSTMENT, -6, "closing", T0)

    assert last.balance_after == 0
    assert balance(storage, "testUser2") == 0


def test_an_adjustment_below_zero_raises_insufficient_credits_and_writes_nothing(
    storage: Storage,
) -> None:
    before = whole_ledger(storage, "testUser2")

    with pytest.raises(InsufficientCredits):
        storage.move_credits("testUser2", EntryType.ADJUSTMENT, -11, "too much", T0)

    assert balance(storage, "testUser2") == 10
    assert whole_ledger(storage, "testUser2") == before


def test_moving_credits_of_an_unknown_user_raises_user_not_found(storage: Storage) -> None:
    with pytest.raises(UserNotFound):
        storage.move_credits("nobody", EntryType.GRANT, 5, "promo", T0)

    assert storage.get_user("nobody") is None


def test_the_service_refuses_a_zero_move_or_an_empty_reason(storage: Storage) -> None:
    with pytest.raises(InvalidInput):
        service.move_credits(storage, "testUser2", 0, "nothing", T0)
    with pytest.raises(InvalidInput):
        service.move_credits(storage, "testUser2", 5, "   ", T0)

    assert len(whole_ledger(storage, "testUser2")) == 1


# -- the ledger ---------------------------------------------------------------------------------
def test_the_ledger_pages_newest_first_with_no_duplicates_and_no_gaps(storage: Storage) -> None:
    storage.create_user("pager", 0, T0)
    # Half the entries share one timestamp: the order must still be the order they were written.
    moved = [
        storage.move_credits("pager", EntryType.GRANT, n, f"grant {n}", T0 + MINUTE * min(n, 12))
        for n in range(1, 24)
    ]

    pages = []
    cursor = None
    while True:
        page = storage.ledger("pager", 5, cursor)
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


def test_a_ledger_page_that_ends_exactly_at_the_last_entry_has_no_next_cursor(
    storage: Storage,
) -> None:
    storage.create_user("pager", 0, T0)
    for n in range(1, 5):
        storage.move_credits("pager", EntryType.GRANT, n, "grant", T0)

    page = storage.ledger("pager", 4, None)

    assert len(page.items) == 4
    assert page.next_cursor is None


@pytest.mark.parametrize("cursor", ["not-a-cursor", "-5", " 5", "5 ", "+5", "٥", "9" * 5000, str(2**63)])
def test_a_malformed_ledger_cursor_is_invalid_input_on_every_storage(storage: Storage, cursor: str) -> None:
    with pytest.raises(InvalidInput):
        storage.ledger("testUser1", 5, cursor)


@pytest.mark.parametrize(
    "cursor",
    ["not-a-cursor", "MjAyNi0xMS0xNnxhYmM", "eHx5", "fHxh", "A" * 5000, "MjAyNi0xMS0xNlQwOTowMDowMFp8YS9i"],
)
def test_a_malformed_list_cursor_is_invalid_input_on_every_storage(storage: Storage, cursor: str) -> None:
    with pytest.raises(InvalidInput):
        storage.list_requests("testUser1", None, 5, cursor)
    with pytest.raises(InvalidInput):
        storage.list_reports(5, cursor)


# -- debit and enqueue --------------------------------------------------------------------------
def test_debit_and_enqueue_debits_the_cost_and_writes_one_deduction_and_a_pending_request(
    storage: Storage,
) -> None:
    new = new_generation(size="1024x1024")

    request, created = storage.debit_and_enqueue(new)

    assert created
    assert (request.id, request.status, request.cost, request.attempts) == (new.id, Status.PENDING, 3, 0)
    assert storage.get_request(new.id) == request
    assert balance(storage, "testUser1") == 97
    newest = whole_ledger(storage, "testUser1")[0]
    assert (newest.type, newest.delta, newest.balance_after) == (EntryType.DEDUCTION, -3, 97)
    assert newest.generation_request_id == new.id
    assert entries_for(storage, "testUser1", new.id) == {EntryType.DEDUCTION: 1}


def test_debit_and_enqueue_can_spend_the_last_credit(storage: Storage) -> None:
    storage.debit_and_enqueue(new_generation("testUser2", cost=10))

    assert balance(storage, "testUser2") == 0


def test_debit_and_enqueue_with_insufficient_credits_writes_nothing(storage: Storage) -> None:
    new = new_generation("testUser2", cost=11)
    before = whole_ledger(storage, "testUser2")

    with pytest.raises(InsufficientCredits):
        storage.debit_and_enqueue(new)

    assert storage.get_request(new.id) is None
    assert storage.list_requests("testUser2", None, 10, None).items == []
    assert whole_ledger(storage, "testUser2") == before
    assert balance(storage, "testUser2") == 10


def test_debit_and_enqueue_for_an_unknown_user_raises_user_not_found(storage: Storage) -> None:
    new = new_generation("nobody")

    with pytest.raises(UserNotFound):
        storage.debit_and_enqueue(new)

    assert storage.get_request(new.id) is None
    assert storage.get_user("nobody") is None


def test_a_replay_with_the_same_key_and_body_returns_the_first_request_and_debits_once(
    storage: Storage,
) -> None:
    first, created = storage.debit_and_enqueue(new_generation(key="k-1", size="1024x1024"))
    retry = new_generation(key="k-1", size="1024x1024", created_at=T0 + MINUTE)

    replayed, created_again = storage.debit_and_enqueue(retry)

    assert (created, created_again) == (True, False)
    assert replayed == first
    assert storage.get_request(retry.id) is None
    assert balance(storage, "testUser1") == 97
    assert entries_for(storage, "testUser1", first.id) == {EntryType.DEDUCTION: 1}


def test_a_key_reused_with_a_different_body_is_an_idempotency_conflict(storage: Storage) -> None:
    first, _ = storage.debit_and_enqueue(new_generation(key="k-1", fingerprint="body-1"))
    other = new_generation(key="k-1", fingerprint="body-2", size="1024x1792")

    with pytest.raises(IdempotencyConflict):
        storage.debit_and_enqueue(other)

    assert storage.get_request(other.id) is None
    assert balance(storage, "testUser1") == 99


def test_the_same_key_used_by_two_users_makes_two_requests(storage: Storage) -> None:
    one, created_one = storage.debit_and_enqueue(new_generation("testUser1", key="shared"))
    two, created_two = storage.debit_and_enqueue(new_generation("testUser2", key="shared"))

    assert created_one and created_two
    assert one.id != two.id
    assert (balance(storage, "testUser1"), balance(storage, "testUser2")) == (99, 9)


def test_a_replay_returns_the_first_request_even_when_the_balance_no_longer_covers_it(
    storage: Storage,
) -> None:
    first, _ = storage.debit_and_enqueue(new_generation("testUser2", key="k-all", cost=10))

    replayed, created = storage.debit_and_enqueue(new_generation("testUser2", key="k-all", cost=10))

    assert (replayed, created) == (first, False)
    assert balance(storage, "testUser2") == 0


def test_a_replay_after_the_request_was_canceled_returns_it_canceled_and_debits_nothing(
    storage: Storage,
) -> None:
    first, _ = storage.debit_and_enqueue(new_generation(key="k-1"))
    storage.cancel_and_refund(first.id, T0)

    replayed, created = storage.debit_and_enqueue(new_generation(key="k-1"))

    assert (replayed.id, replayed.status, created) == (first.id, Status.CANCELED, False)
    assert balance(storage, "testUser1") == 100


def test_a_models_settings_read_alone_match_the_catalog_and_an_edit_shows_at_once(storage: Storage) -> None:
    assert storage.model_settings("model-a") == storage.catalog().models["model-a"]
    assert storage.model_settings("model-z") is None

    storage.put_model(ModelSettings("model-a", failure_rate=0.5, latency_ms=7, enabled=False))

    assert storage.model_settings("model-a") == ModelSettings("model-a", 0.5, 7, False)
    assert storage.catalog().models["model-a"] == ModelSettings("model-a", 0.5, 7, False)


def test_service_create_generation_prices_the_size_from_the_catalog(storage: Storage) -> None:
    body = {
        "userId": "testUser1",
        "model": "model-b",
        "style": "sketch",
        "color": "neon",
        "size": "1024x1792",
    }

    request, created = service.create_generation(storage, body, max_prompt_length=1000, now=T0)

    assert created and request.cost == 4
    assert balance(storage, "testUser1") == 96


def test_a_users_requests_page_newest_first_and_filter_by_status(storage: Storage) -> None:
    # Three share a timestamp: the cursor must still neither skip nor repeat any of them.
    made = [enqueue(storage, created_at=T0 + MINUTE * min(n, 3)) for n in range(7)]
    enqueue(storage, "testUser2")
    storage.cancel_and_refund(made[0].id, T0)

    walked, cursor = [], None
    while True:
        page = storage.list_requests("testUser1", None, 2, cursor)
        walked.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert sorted(r.id for r in walked) == sorted(r.id for r in made)
    assert [r.created_at for r in walked] == sorted((r.created_at for r in made), reverse=True)
    canceled = storage.list_requests("testUser1", Status.CANCELED, 10, None)
    assert [r.id for r in canceled.items] == [made[0].id]


# -- jobs: claiming -----------------------------------------------------------------------------
def test_claim_returns_the_oldest_pending_job_and_marks_it_running(storage: Storage) -> None:
    later = enqueue(storage, created_at=T0 + 2 * MINUTE)
    oldest = enqueue(storage, created_at=T0)
    enqueue(storage, created_at=T0 + MINUTE)
    now = T0 + 5 * MINUTE

    job = storage.claim_job("w-1", now, now + LEASE)

    assert job is not None and job.id == oldest.id
    assert (job.status, job.attempts, job.started_at) == (Status.RUNNING, 1, now)
    assert storage.get_request(oldest.id) == job
    assert storage.get_request(later.id).status is Status.PENDING  # type: ignore[union-attr]


def test_a_claimed_job_holds_a_lease_until_the_given_time(storage: Storage) -> None:
    enqueue(storage)
    job = claim(storage, "w-1", T0)

    assert storage.expired_jobs(T0 + LEASE - timedelta(seconds=1)) == []
    assert [j.id for j in storage.expired_jobs(T0 + LEASE + timedelta(seconds=1))] == [job.id]


def test_two_claims_never_return_the_same_job(storage: Storage) -> None:
    first = enqueue(storage, created_at=T0)
    second = enqueue(storage, created_at=T0 + MINUTE)

    claimed = [claim(storage, "w-1").id, claim(storage, "w-2").id]

    assert claimed == [first.id, second.id]
    assert storage.claim_job("w-3", T0, T0 + LEASE) is None


# -- jobs: finishing ----------------------------------------------------------------------------
def test_only_the_lease_owner_can_complete_a_job(storage: Storage) -> None:
    enqueue(storage)
    job = claim(storage, "w-1")

    assert not storage.complete(job.id, "w-2", "/images/x.png", T0 + MINUTE)
    assert storage.get_request(job.id).status is Status.RUNNING  # type: ignore[union-attr]

    assert storage.complete(job.id, "w-1", "/images/x.png", T0 + MINUTE)
    done = storage.get_request(job.id)
    assert done is not None
    assert (done.status, done.image_url, done.completed_at) == (
        Status.COMPLETED,
        "/images/x.png",
        T0 + MINUTE,
    )
    assert not storage.complete(job.id, "w-1", "/images/y.png", T0 + 2 * MINUTE)
    assert entries_for(storage, "testUser1", job.id) == {EntryType.DEDUCTION: 1}
    assert list(service.verify(storage)) == []


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ({"start", "completed"}, ["start", "completed"]),
        ({"start"}, ["start"]),
        ({"completed"}, ["completed"]),
    ],
)
def test_a_job_with_a_webhook_queues_a_delivery_for_each_event_it_asked_for(
    storage: Storage, events: set[str], expected: list[str]
) -> None:
    new = replace(new_generation(), webhook="https://hooks.example.com/x", webhook_events=frozenset(events))
    request, _ = storage.debit_and_enqueue(new)
    job = claim(storage, "w-1")
    started = storage.claim_webhooks(T0, T0 + LEASE, 10)
    for delivery in started:
        storage.webhook_delivered(delivery.id, T0)

    assert storage.complete(job.id, "w-1", "/images/x.png", T0 + MINUTE)
    ended = storage.claim_webhooks(T0 + MINUTE, T0 + MINUTE + LEASE, 10)

    assert [d.event for d in started + ended] == expected
    assert {d.generation_request_id for d in started + ended} == {request.id}
    assert all(d.url == "https://hooks.example.com/x" for d in started + ended)
    done = storage.get_request(request.id)
    assert done is not None and done.status is Status.COMPLETED
    assert list(service.verify(storage)) == []


def test_completing_a_job_without_a_webhook_queues_no_delivery(storage: Storage) -> None:
    enqueue(storage)
    job = claim(storage, "w-1")

    assert storage.complete(job.id, "w-1", "/images/x.png", T0 + MINUTE)

    assert storage.claim_webhooks(T0 + MINUTE, T0 + MINUTE + LEASE, 10) == []


def test_a_pending_job_can_be_neither_completed_nor_failed(storage: Storage) -> None:
    request = enqueue(storage)

    assert not storage.complete(request.id, "w-1", "/images/x.png", T0)
    assert not storage.fail_and_refund(request.id, "never ran", T0)
    assert storage.get_request(request.id).status is Status.PENDING  # type: ignore[union-attr]


def test_fail_and_refund_writes_exactly_one_refund_and_a_second_call_returns_false(
    storage: Storage,
) -> None:
    enqueue(storage, size="1024x1792")
    job = claim(storage, "w-1")

    assert storage.fail_and_refund(job.id, "model exploded", T0 + MINUTE, worker_id="w-1")
    assert not storage.fail_and_refund(job.id, "model exploded", T0 + MINUTE, worker_id="w-1")
    assert not storage.fail_and_refund(job.id, "model exploded", T0 + MINUTE)

    failed = storage.get_request(job.id)
    assert failed is not None
    assert (failed.status, failed.error) == (Status.FAILED, "model exploded")
    assert balance(storage, "testUser1") == 100
    assert entries_for(storage, "testUser1", job.id) == {EntryType.DEDUCTION: 1, EntryType.REFUND: 1}
    refund = whole_ledger(storage, "testUser1")[0]
    assert (refund.type, refund.delta, refund.balance_after) == (EntryType.REFUND, 4, 100)
    assert list(service.verify(storage)) == []


def test_fail_and_refund_by_a_worker_that_does_not_hold_the_lease_changes_nothing(
    storage: Storage,
) -> None:
    enqueue(storage)
    job = claim(storage, "w-1")

    assert not storage.fail_and_refund(job.id, "not mine", T0, worker_id="w-2")

    assert storage.get_request(job.id).status is Status.RUNNING  # type: ignore[union-attr]
    assert balance(storage, "testUser1") == 99


def test_a_completed_job_can_be_neither_failed_nor_canceled(storage: Storage) -> None:
    done = finished(storage, Status.COMPLETED, T0)

    assert not storage.fail_and_refund(done.id, "too late", T0 + MINUTE)
    assert not storage.cancel_and_refund(done.id, T0 + MINUTE)

    assert storage.get_request(done.id).status is Status.COMPLETED  # type: ignore[union-attr]
    assert entries_for(storage, "testUser1", done.id) == {EntryType.DEDUCTION: 1}


# -- jobs: canceling ----------------------------------------------------------------------------
def test_cancel_refunds_a_pending_request_exactly_once(storage: Storage) -> None:
    request = enqueue(storage, size="1024x1024")

    assert storage.cancel_and_refund(request.id, T0 + MINUTE)
    assert not storage.cancel_and_refund(request.id, T0 + 2 * MINUTE)

    assert storage.get_request(request.id).status is Status.CANCELED  # type: ignore[union-attr]
    assert balance(storage, "testUser1") == 100
    assert entries_for(storage, "testUser1", request.id) == {EntryType.DEDUCTION: 1, EntryType.REFUND: 1}
    assert storage.claim_job("w-1", T0, T0 + LEASE) is None


def test_cancel_leaves_a_running_request_alone(storage: Storage) -> None:
    enqueue(storage)
    job = claim(storage, "w-1")

    assert not storage.cancel_and_refund(job.id, T0)
    with pytest.raises(InvalidState):
        service.cancel_generation(storage, job.id, T0)

    assert storage.get_request(job.id).status is Status.RUNNING  # type: ignore[union-attr]
    assert balance(storage, "testUser1") == 99


def test_canceling_an_unknown_request_returns_false(storage: Storage) -> None:
    assert not storage.cancel_and_refund("no-such-request", T0)


# -- jobs: leases and recovery ------------------------------------------------------------------
def test_a_heartbeat_keeps_a_job_from_expiring(storage: Storage) -> None:
    enqueue(storage)
    job = claim(storage, "w-1", T0)

    assert storage.extend_leases({job.id: "w-1"}, T0 + 10 * MINUTE) == 1
    assert storage.extend_leases({job.id: "w-2"}, T0 + 20 * MINUTE) == 0

    assert storage.expired_jobs(T0 + 5 * MINUTE) == []
    assert [j.id for j in storage.expired_jobs(T0 + 11 * MINUTE)] == [job.id]


def test_a_heartbeat_extends_only_the_request_and_worker_pairs_it_names(storage: Storage) -> None:
    enqueue(storage, created_at=T0)
    enqueue(storage, created_at=T0 + MINUTE)
    taken_over = claim(storage, "w-b", T0)  # w-a believes it still runs this one
    own = claim(storage, "w-b", T0)

    extended = storage.extend_leases({taken_over.id: "w-a", own.id: "w-b"}, T0 + 10 * MINUTE)

    assert extended == 1
    assert [j.id for j in storage.expired_jobs(T0 + 5 * MINUTE)] == [taken_over.id]


def test_requeue_hands_an_expired_job_back_to_the_queue_only_after_its_lease_ran_out(
    storage: Storage,
) -> None:
    enqueue(storage)
    job = claim(storage, "w-1", T0)

    assert not storage.requeue(job.id, T0 + LEASE - timedelta(seconds=1))
    assert storage.requeue(job.id, T0 + LEASE + timedelta(seconds=1))

    assert storage.get_request(job.id).status is Status.PENDING  # type: ignore[union-attr]
    again = claim(storage, "w-2", T0 + 2 * MINUTE)
    assert (again.id, again.attempts) == (job.id, 2)


def test_recovery_requeues_below_max_attempts_and_fails_and_refunds_at_max(storage: Storage) -> None:
    enqueue(storage, size="1024x1024")
    now = T0
    for attempt in (1, 2):
        job = claim(storage, f"w-{attempt}", now)
        assert job.attempts == attempt
        now += LEASE + MINUTE
        recovery = jobs.recover_expired_jobs(storage, now, max_attempts=3)
        assert recovery == jobs.Recovery(requeued=1, failed=0)
    claim(storage, "w-3", now)

    recovery = jobs.recover_expired_jobs(storage, now + LEASE + MINUTE, max_attempts=3)

    assert recovery == jobs.Recovery(requeued=0, failed=1)
    failed = storage.get_request(job.id)
    assert failed is not None and failed.status is Status.FAILED
    assert balance(storage, "testUser1") == 100
    assert entries_for(storage, "testUser1", job.id) == {EntryType.DEDUCTION: 1, EntryType.REFUND: 1}
    assert jobs.recover_expired_jobs(storage, now + 10 * LEASE, max_attempts=3) == jobs.Recovery(0, 0)
    assert list(service.verify(storage)) == []


def test_recovery_leaves_jobs_with_live_leases_alone(storage: Storage) -> None:
    enqueue(storage)
    job = claim(storage, "w-1", T0)

    assert jobs.recover_expired_jobs(storage, T0 + MINUTE / 2, max_attempts=1) == jobs.Recovery(0, 0)
    assert storage.get_request(job.id).status is Status.RUNNING  # type: ignore[union-attr]


def test_a_late_complete_by_a_worker_whose_lease_was_taken_over_returns_false(
    storage: Storage,
) -> None:
    enqueue(storage)
    slow = claim(storage, "w-slow", T0)
    later = T0 + LEASE + MINUTE
    assert jobs.recover_expired_jobs(storage, later, max_attempts=3).requeued == 1
    claim(storage, "w-fast", later)

    assert not storage.complete(slow.id, "w-slow", "/images/slow.png", later)
    assert not storage.fail_and_refund(slow.id, "slow failed", later, worker_id="w-slow")
    assert storage.complete(slow.id, "w-fast", "/images/fast.png", later)

    done = storage.get_request(slow.id)
    assert done is not None
    assert (done.status, done.image_url) == (Status.COMPLETED, "/images/fast.png")
    assert entries_for(storage, "testUser1", slow.id) == {EntryType.DEDUCTION: 1}
    assert list(service.verify(storage)) == []


def test_a_late_complete_after_recovery_failed_the_job_returns_false(storage: Storage) -> None:
    enqueue(storage)
    job = claim(storage, "w-slow", T0)
    assert jobs.recover_expired_jobs(storage, T0 + LEASE + MINUTE, max_attempts=1).failed == 1

    assert not storage.complete(job.id, "w-slow", "/images/slow.png", T0 + 2 * LEASE)

    assert storage.get_request(job.id).status is Status.FAILED  # type: ignore[union-attr]
    assert balance(storage, "testUser1") == 100
    assert list(service.verify(storage)) == []


# -- reports ------------------------------------------------------------------------------------
W47 = reports.iso_week("2026-W47")  # [2026-11-16 00:00, 2026-11-23 00:00) UTC
TICK = timedelta(microseconds=1)


def _requests_around_week_47(storage: Storage) -> None:
    finished(storage, Status.COMPLETED, W47.start - TICK)  # outside: just before the start
    finished(storage, Status.COMPLETED, W47.start, size="1024x1024")
    finished(storage, Status.FAILED, W47.start + timedelta(days=2), model="model-b")
    finished(storage, Status.COMPLETED, W47.start + timedelta(days=3), user_id="testUser2")
    finished(storage, Status.CANCELED, W47.start + timedelta(days=4), style="sketch")
    finished(storage, Status.COMPLETED, W47.end, size="1024x1792")  # outside: the end is open
    finished(storage, Status.PENDING, W47.end - TICK, color="neon")  # inside: the last instant


def test_group_counts_cover_the_half_open_period(storage: Storage) -> None:
    _requests_around_week_47(storage)

    groups = storage.group_counts(W47.start, W47.end)

    counted = {(g.model, g.style, g.color, g.size, g.status): (g.count, g.cost) for g in groups}
    assert counted == {
        ("model-a", "anime", "vibrant", "1024x1024", "completed"): (1, 3),
        ("model-b", "anime", "vibrant", "512x512", "failed"): (1, 1),
        ("model-a", "anime", "vibrant", "512x512", "completed"): (1, 1),
        ("model-a", "sketch", "vibrant", "512x512", "canceled"): (1, 1),
        ("model-a", "anime", "neon", "512x512", "pending"): (1, 1),
    }
    assert storage.unique_users(W47.start, W47.end) == 2


def test_a_period_ending_where_the_next_starts_shares_no_request(storage: Storage) -> None:
    _requests_around_week_47(storage)
    before = (W47.start - timedelta(days=7), W47.start)
    after = (W47.end, W47.end + timedelta(days=7))

    assert sum(g.count for g in storage.group_counts(*before)) == 1
    assert sum(g.count for g in storage.group_counts(*after)) == 1
    assert storage.unique_users(*after) == 1


def test_an_empty_period_has_no_groups_and_no_users(storage: Storage) -> None:
    assert storage.group_counts(W47.start, W47.end) == []
    assert storage.unique_users(W47.start, W47.end) == 0


def test_run_report_stores_a_report_that_can_be_read_back(storage: Storage) -> None:
    _requests_around_week_47(storage)
    assert storage.get_report("2026-W47") is None

    document = service.run_report(storage, W47, W47.end + timedelta(hours=1))

    assert storage.get_report("2026-W47") == document
    assert service.get_report(storage, "2026-W47") == document
    expected = {
        "id": "2026-W47",
        "periodStart": "2026-11-16T00:00:00Z",
        "periodEnd": "2026-11-23T00:00:00Z",
        "totalRequests": 5,
        "completedRequests": 2,
        "failedRequests": 1,
        "totalCreditsSpent": 4,
        "totalCreditsRefunded": 1,
        "successRate": 66.67,
        "uniqueUsers": 2,
    }
    assert {key: document[key] for key in expected} == expected
    assert document["byModel"]["model-b"] == {
        "total": 1,
        "completed": 0,
        "failed": 1,
        "failureRate": 100.0,
        "creditsSpent": 0,
        "creditsRefunded": 1,
    }


# A handful of requests a week is enough once the volume guards are down.
LOOSE = reports.Thresholds(min_requests=1, min_key_requests=1)


def test_a_finding_marked_expected_stays_on_its_report_and_is_withheld_the_next_week(
    storage: Storage,
) -> None:
    weeks = [*reports.weeks_before(W47, 3), W47, reports.iso_week("2026-W48")]
    for week, count in zip(weeks, (2, 2, 2, 8, 8), strict=True):
        for hour in range(count):
            finished(storage, Status.COMPLETED, week.start + timedelta(hours=hour + 1))
    for week in weeks[:3]:
        service.run_report(storage, week, week.end, thresholds=LOOSE)
    spike = service.run_report(storage, W47, W47.end, thresholds=LOOSE)
    assert [a["metric"] for a in spike["anomalies"]] == ["totalRequests"]

    marked = service.mark_expected(
        storage, "2026-W47", reports.FindingId("totalRequests"), "a launch", W47.end + timedelta(hours=2)
    )

    assert marked["mark"]["note"] == "a launch"
    again = service.run_report(storage, W47, W47.end + timedelta(hours=3), thresholds=LOOSE)
    assert again["anomalies"][0]["mark"]["note"] == "a launch"  # a re-run keeps the mark
    assert storage.get_report("2026-W47") == again
    after = service.run_report(storage, weeks[-1], weeks[-1].end, thresholds=LOOSE)
    assert after["anomalies"] == []
    assert [(a["metric"], a["mark"]["reportId"]) for a in after["expectedAnomalies"]] == [
        ("totalRequests", "2026-W47")
    ]


def test_marking_a_finding_a_report_does_not_have_is_not_found(storage: Storage) -> None:
    _requests_around_week_47(storage)
    service.run_report(storage, W47, W47.end)

    with pytest.raises(NotFound, match="has no finding on share of style 'anime'"):
        service.mark_expected(storage, "2026-W47", reports.FindingId("share", "style", "anime"), "", W47.end)
    with pytest.raises(NotFound, match="Report '2026-W01' not found"):
        service.mark_expected(storage, "2026-W01", reports.FindingId("totalRequests"), "", W47.end)


def test_running_a_report_again_gives_the_same_numbers(storage: Storage) -> None:
    _requests_around_week_47(storage)
    first = service.run_report(storage, W47, W47.end + timedelta(hours=1))

    again = service.run_report(storage, W47, W47.end + timedelta(days=1))

    assert again["generatedAt"] != first["generatedAt"]
    assert {k: v for k, v in again.items() if k != "generatedAt"} == {
        k: v for k, v in first.items() if k != "generatedAt"
    }
    assert storage.get_report("2026-W47") == again


# -- text every backend stores alike (domain.validation.text_problem) -----------------------------
# Every kind of character the domain lets through: controls, DEL, the last BMP and astral code
# points, combining marks, right-to-left text, emoji with joiners, quotes and backslashes.
STORABLE_TEXT = (
    "".join(chr(c) for c in range(1, 32))
    + "\x7f\x80\u00a0\u200b\u202e\u0301\ufeff\ufffd\uffff\U0001f469\u200d\U0001f4bb\U0010ffff"
    + "שלום 'quotes' \"double\" \\back\\slash %s ?:; -- /*"
)


def test_every_character_the_domain_accepts_is_stored_and_read_back_unchanged(storage: Storage) -> None:
    assert text_problem("prompt", STORABLE_TEXT) is None
    new = new_generation()
    new = replace(new, spec=replace(new.spec, prompt=STORABLE_TEXT))
    request, _ = storage.debit_and_enqueue(new)
    assert request.prompt == STORABLE_TEXT
    assert storage.get_request(new.id).prompt == STORABLE_TEXT  # type: ignore[union-attr]

    entry = service.move_credits(storage, "testUser2", 3, STORABLE_TEXT, T0)
    assert entry.reason == STORABLE_TEXT.strip()
    assert whole_ledger(storage, "testUser2")[0].reason == STORABLE_TEXT.strip()


def test_a_nul_character_is_refused_before_any_backend_sees_it(storage: Storage) -> None:
    body = {
        "userId": "testUser1",
        "model": "model-a",
        "style": "anime",
        "color": "vibrant",
        "size": "512x512",
    }
    body["prompt"] = "a\x00cat"
    with pytest.raises(InvalidInput, match="NUL"):
        service.create_generation(storage, body, max_prompt_length=100, now=T0)
    with pytest.raises(InvalidInput, match="NUL"):
        service.move_credits(storage, "testUser2", 3, "promo\x00", T0)
    assert balance(storage, "testUser1") == 100 and balance(storage, "testUser2") == 10
    assert storage.list_requests(None, None, 10, None).items == []
