"""The ledger invariants (DESIGN.md) hold while many threads use one storage at once.

Each test starts its threads together on a barrier and then checks the end state through the port,
plus `service.verify`, which audits invariants 1-3 over the whole database.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TypeGuard, TypeVar

import pytest
from sqlalchemy import text

from imagegen import jobs, service
from imagegen.domain.errors import InsufficientCredits, StorageUnavailable
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.ports import Storage
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import (
    BODY,
    LEASE,
    T0,
    balance,
    claim,
    enqueue,
    entries_for,
    new_generation,
    whole_ledger,
)

R = TypeVar("R")


def together(threads: int, work: Callable[[int], R]) -> list[R]:
    """Runs work(0..threads-1) on that many threads released at once; re-raises the first error."""
    barrier = threading.Barrier(threads, timeout=30)

    def start(n: int) -> R:
        barrier.wait()
        return work(n)

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(start, n) for n in range(threads)]
        return [future.result(timeout=120) for future in futures]


def retrying(call: Callable[[], R], attempts: int = 30) -> R:
    """Calls again on StorageUnavailable, which promises that nothing was written (as a client would).

    SQL backends wait on locks instead; Firestore aborts contended transactions and, after its own
    retries, gives up with Contention (a StorageUnavailable).
    """
    for _ in range(attempts - 1):
        try:
            return call()
        except StorageUnavailable:
            time.sleep(0.05)
    return call()


def assert_balance_chain(storage: Storage, user_id: str) -> None:
    """Newest first, each entry's balance_after is the previous one's plus the entry's delta."""
    entries = list(reversed(whole_ledger(storage, user_id)))
    running = 0
    for entry in entries:
        running += entry.delta
        assert entry.balance_after == running, entry
    assert running == balance(storage, user_id)


def test_twenty_threads_spending_two_hundred_credits_out_of_fifty_succeed_exactly_fifty_times(
    storage: Storage,
) -> None:
    storage.create_user("spender", 50, T0)

    def spend_ten(_: int) -> Counter[str]:
        outcome: Counter[str] = Counter()
        for _ in range(10):
            try:
                retrying(lambda: storage.debit_and_enqueue(new_generation("spender")))
                outcome["debited"] += 1
            except InsufficientCredits:
                outcome["refused"] += 1
        return outcome

    outcome = sum(together(20, spend_ten), Counter())

    assert outcome == {"debited": 50, "refused": 150}
    assert balance(storage, "spender") == 0
    assert len(storage.list_requests("spender", Status.PENDING, 100, None).items) == 50
    deductions = [e for e in whole_ledger(storage, "spender") if e.type is EntryType.DEDUCTION]
    assert sorted(e.balance_after for e in deductions) == list(range(50))  # type: ignore[type-var]
    assert_balance_chain(storage, "spender")
    assert list(service.verify(storage)) == []


def test_grants_and_debits_racing_on_one_user_keep_the_ledger_and_balance_in_step(
    storage: Storage,
) -> None:
    storage.create_user("busy", 5, T0)

    def grant_or_spend(n: int) -> None:
        for _ in range(10):
            if n % 2:
                retrying(lambda: storage.move_credits("busy", EntryType.GRANT, 1, "top-up", T0))
            else:
                with suppress(InsufficientCredits):
                    retrying(lambda: storage.debit_and_enqueue(new_generation("busy")))

    together(8, grant_or_spend)

    assert_balance_chain(storage, "busy")
    assert list(service.verify(storage)) == []


@pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING])
def test_racing_fails_and_cancels_of_one_request_refund_it_exactly_once(
    storage: Storage, status: Status
) -> None:
    for round_ in range(5):
        request = enqueue(storage, size="1024x1024")
        if status is Status.RUNNING:
            claim(storage, f"w-{round_}")

        def end_it(n: int, request_id: str = request.id) -> bool:
            if n % 2:
                return retrying(lambda: storage.cancel_and_refund(request_id, T0))
            return retrying(lambda: storage.fail_and_refund(request_id, "duplicate delivery", T0))

        assert sum(together(8, end_it)) == 1
        assert entries_for(storage, "testUser1", request.id) == {
            EntryType.DEDUCTION: 1,
            EntryType.REFUND: 1,
        }
    assert balance(storage, "testUser1") == 100
    assert list(service.verify(storage)) == []


def test_four_workers_claiming_a_hundred_jobs_claim_each_exactly_once(storage: Storage) -> None:
    created = {enqueue(storage, created_at=T0).id for _ in range(100)}

    def claim_until_empty(n: int) -> list[str]:
        claimed = []
        while (job := retrying(lambda: storage.claim_job(f"w-{n}", T0, T0 + LEASE))) is not None:
            assert job.attempts == 1
            claimed.append(job.id)
        return claimed

    claimed = [job_id for ids in together(4, claim_until_empty) for job_id in ids]

    assert len(claimed) == 100
    assert set(claimed) == created
    assert storage.list_requests(None, Status.PENDING, 10, None).items == []


def test_claims_racing_cancels_end_each_request_running_or_refunded_never_both(
    storage: Storage,
) -> None:
    ids = [enqueue(storage, created_at=T0).id for _ in range(40)]

    def claim_or_cancel(n: int) -> None:
        if n < 2:
            while retrying(lambda: storage.claim_job(f"w-{n}", T0, T0 + LEASE)) is not None:
                pass
        else:
            for request_id in ids if n == 2 else reversed(ids):
                retrying(functools.partial(storage.cancel_and_refund, request_id, T0))

    together(4, claim_or_cancel)

    for request_id in ids:
        request = storage.get_request(request_id)
        assert request is not None and request.status in (Status.RUNNING, Status.CANCELED)
        refunds = entries_for(storage, "testUser1", request_id)[EntryType.REFUND]
        assert refunds == (1 if request.status is Status.CANCELED else 0)
    assert list(service.verify(storage)) == []


@pytest.mark.parametrize(("max_attempts", "requeued", "failed"), [(1, 0, 20), (3, 20, 0)])
def test_recovery_passes_racing_each_other_handle_every_expired_job_once(
    storage: Storage, max_attempts: int, requeued: int, failed: int
) -> None:
    for _ in range(20):
        enqueue(storage, created_at=T0)
    for n in range(20):
        claim(storage, f"w-{n}", T0)
    later = T0 + LEASE * 2

    def recover(_: int) -> jobs.Recovery:
        return retrying(lambda: jobs.recover_expired_jobs(storage, later, max_attempts=max_attempts))

    results = together(4, recover)

    assert sum(r.requeued for r in results) == requeued
    assert sum(r.failed for r in results) == failed
    assert balance(storage, "testUser1") == 100 - requeued
    assert list(service.verify(storage)) == []


def test_concurrent_duplicate_creates_with_one_idempotency_key_make_one_request_and_one_debit(
    storage: Storage,
) -> None:
    def create(_: int) -> tuple[str, bool]:
        request, created = retrying(
            lambda: service.create_generation(
                storage, BODY, max_prompt_length=1000, now=T0, idempotency_key="double-click"
            )
        )
        return request.id, created

    results = together(8, create)

    assert len({request_id for request_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert balance(storage, "testUser1") == 99
    assert len(storage.list_requests("testUser1", None, 10, None).items) == 1
    assert list(service.verify(storage)) == []


def test_a_duplicate_create_racing_the_first_on_a_balance_for_one_still_gets_the_first_result(
    storage: Storage,
) -> None:
    storage.create_user("tight", 1, T0)
    body = {**BODY, "userId": "tight"}
    # Two API processes: each has its own writer, so on PostgreSQL both transactions are in flight.
    clients = (
        [storage, SqlStorage(storage.engine.url.render_as_string(False))]
        if is_postgres(storage)
        else [storage] * 2
    )

    def create(n: int) -> str:
        created, _ = retrying(
            lambda: service.create_generation(
                clients[n], body, max_prompt_length=1000, now=T0, idempotency_key="retry-after-timeout"
            )
        )
        return created.id

    with ThreadPoolExecutor(2) as pool:
        with holding_user_row(storage, "tight"):
            futures = [pool.submit(create, n) for n in range(2)]
            wait_for_lock_waiters(storage, 2)
        results = [future.result(timeout=60) for future in futures]
    if clients[1] is not storage:
        clients[1].close()

    assert results[0] == results[1]
    assert balance(storage, "tight") == 0


def is_postgres(storage: Storage) -> TypeGuard[SqlStorage]:
    return isinstance(storage, SqlStorage) and storage.engine.dialect.name == "postgresql"


@contextmanager
def holding_user_row(storage: Storage, user_id: str) -> Iterator[None]:
    """On PostgreSQL, holds a user's row lock so that both racers are in flight at once.

    They queue on the row and are released together, the interleaving a client's quick retry makes.
    Elsewhere it is a no-op: the adapter serialises SQLite writers, and Firestore transactions race.
    """
    if not is_postgres(storage):
        yield
        return
    with storage.engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT credits FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
        yield


def wait_for_lock_waiters(storage: Storage, count: int, timeout: float = 15.0) -> None:
    if not is_postgres(storage):
        return
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + timeout
    with storage.engine.connect() as conn:
        while conn.execute(query).scalar_one() < count:
            assert time.monotonic() < deadline, f"fewer than {count} transactions ever waited on the lock"
            time.sleep(0.02)
            conn.rollback()
