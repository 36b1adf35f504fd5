"""The ledger invariants (DESIGN.md) hold while many callers use one storage at once.

Each test starts its callers together as tasks of one event loop, as the API's handlers and the job
workers run (the adapters run their calls on threads, batches or pipelines as they chose), and then
checks the end state through the port, plus `violations()`, which audits invariants 1-3 over the
whole database.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeGuard, TypeVar

import pytest
from sqlalchemy import text

from imagegen.domain.errors import InsufficientCredits, StorageUnavailable
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.ports import Lease, Storage
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import (
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


async def together(callers: int, work: Callable[[int], Awaitable[R]]) -> list[R]:
    """Runs work(0..callers-1) as that many tasks started at once; re-raises the first error."""
    async with asyncio.timeout(120):
        return list(await asyncio.gather(*(work(n) for n in range(callers))))


async def retrying(call: Callable[[], Awaitable[R]], attempts: int = 30) -> R:
    """Calls again on StorageUnavailable, which promises that nothing was written (as a client would).

    SQL backends wait on locks instead; Firestore aborts contended transactions and, after its own
    retries, gives up with Contention (a StorageUnavailable).
    """
    for _ in range(attempts - 1):
        try:
            return await call()
        except StorageUnavailable:
            await asyncio.sleep(0.05)
    return await call()


async def assert_balance_chain(storage: Storage, user_id: str) -> None:
    """Newest first, each entry's balance_after is the previous one's plus the entry's delta."""
    entries = list(reversed(await whole_ledger(storage, user_id)))
    running = 0
    for entry in entries:
        running += entry.delta
        assert entry.balance_after == running, entry
    assert running == await balance(storage, user_id)


async def test_twenty_callers_spending_two_hundred_credits_out_of_fifty_succeed_exactly_fifty_times(
    storage: Storage,
) -> None:
    await storage.create_user("spender", 50, T0)

    async def spend_ten(_: int) -> Counter[str]:
        outcome: Counter[str] = Counter()
        for _ in range(10):
            try:
                await retrying(lambda: storage.debit_and_enqueue(new_generation("spender")))
                outcome["debited"] += 1
            except InsufficientCredits:
                outcome["refused"] += 1
        return outcome

    outcome = sum(await together(20, spend_ten), Counter())

    assert outcome == {"debited": 50, "refused": 150}
    assert await balance(storage, "spender") == 0
    assert len((await storage.list_requests("spender", Status.PENDING, 100, None)).items) == 50
    deductions = [e for e in await whole_ledger(storage, "spender") if e.type is EntryType.DEDUCTION]
    assert sorted(e.balance_after for e in deductions) == list(range(50))  # type: ignore[type-var]
    await assert_balance_chain(storage, "spender")
    assert await storage.violations() == []


async def test_grants_and_debits_racing_on_one_user_keep_the_ledger_and_balance_in_step(
    storage: Storage,
) -> None:
    await storage.create_user("busy", 5, T0)

    async def grant_or_spend(n: int) -> None:
        for _ in range(10):
            if n % 2:
                await retrying(lambda: storage.move_credits("busy", EntryType.GRANT, 1, "top-up", T0))
            else:
                with suppress(InsufficientCredits):
                    await retrying(lambda: storage.debit_and_enqueue(new_generation("busy")))

    await together(8, grant_or_spend)

    await assert_balance_chain(storage, "busy")
    assert await storage.violations() == []


@pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING])
async def test_racing_fails_and_cancels_of_one_request_refund_it_exactly_once(
    storage: Storage, status: Status
) -> None:
    for round_ in range(5):
        request = await enqueue(storage, size="1024x1024")
        if status is Status.RUNNING:
            await claim(storage, f"w-{round_}")

        async def end_it(n: int, request_id: str = request.id) -> bool:
            if n % 2:
                return await retrying(lambda: storage.cancel_and_refund(request_id, T0))
            return await retrying(lambda: storage.fail_and_refund(request_id, "duplicate delivery", T0))

        assert sum(await together(8, end_it)) == 1
        assert await entries_for(storage, "testUser1", request.id) == {
            EntryType.DEDUCTION: 1,
            EntryType.REFUND: 1,
        }
    assert await balance(storage, "testUser1") == 100
    assert await storage.violations() == []


async def test_four_workers_claiming_a_hundred_jobs_claim_each_exactly_once(storage: Storage) -> None:
    created = {(await enqueue(storage, created_at=T0)).id for _ in range(100)}

    async def claim_until_empty(n: int) -> list[str]:
        claimed = []
        while (job := await retrying(lambda: storage.claim_job(Lease(f"w-{n}", T0 + LEASE), T0))) is not None:
            assert job.attempts == 1
            claimed.append(job.id)
        return claimed

    claimed = [job_id for ids in await together(4, claim_until_empty) for job_id in ids]

    assert len(claimed) == 100
    assert set(claimed) == created
    assert (await storage.list_requests(None, Status.PENDING, 10, None)).items == []


async def test_claims_racing_cancels_end_each_request_canceled_and_refunded_once(
    storage: Storage,
) -> None:
    ids = [(await enqueue(storage, created_at=T0)).id for _ in range(40)]

    async def claim_or_cancel(n: int) -> None:
        if n < 2:
            while await retrying(lambda: storage.claim_job(Lease(f"w-{n}", T0 + LEASE), T0)) is not None:
                pass
        else:
            for request_id in ids if n == 2 else reversed(ids):
                await retrying(lambda request_id=request_id: storage.cancel_and_refund(request_id, T0))

    await together(4, claim_or_cancel)

    for request_id in ids:
        request = await storage.get_request(request_id)
        assert request is not None and request.status is Status.CANCELED  # pending or running: canceled
        assert (await entries_for(storage, "testUser1", request_id))[EntryType.REFUND] == 1
    assert await balance(storage, "testUser1") == 100
    assert await storage.violations() == []


@pytest.mark.parametrize(("max_attempts", "requeued", "failed"), [(1, 0, 20), (3, 20, 0)])
async def test_recovery_moves_racing_each_other_handle_every_expired_job_once(
    storage: Storage, max_attempts: int, requeued: int, failed: int
) -> None:
    for _ in range(20):
        await enqueue(storage, created_at=T0)
    for n in range(20):
        await claim(storage, f"w-{n}", T0)
    later = T0 + LEASE * 2

    async def recover(_: int) -> Counter[str]:
        """One recovery pass, as the workers' recovery makes it: requeue below max_attempts, else fail."""
        done: Counter[str] = Counter()
        for job in await retrying(lambda: storage.expired_jobs(later)):
            if job.attempts < max_attempts:
                done["requeued"] += await retrying(lambda job=job: storage.requeue(job.id, later))
            else:
                done["failed"] += await retrying(
                    lambda job=job: storage.fail_and_refund(job.id, "expired", later, lease_expired=True)
                )
        return done

    results = sum(await together(4, recover), Counter())

    assert results["requeued"] == requeued
    assert results["failed"] == failed
    assert await balance(storage, "testUser1") == 100 - requeued
    assert await storage.violations() == []


async def test_concurrent_duplicate_creates_with_one_idempotency_key_make_one_request_and_one_debit(
    storage: Storage,
) -> None:
    async def create(_: int) -> tuple[str, bool]:
        new = new_generation(key="double-click")
        request, created = await retrying(lambda: storage.debit_and_enqueue(new))
        return request.id, created

    results = await together(8, create)

    assert len({request_id for request_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await balance(storage, "testUser1") == 99
    assert len((await storage.list_requests("testUser1", None, 10, None)).items) == 1
    assert await storage.violations() == []


async def test_a_duplicate_create_racing_the_first_on_a_balance_for_one_still_gets_the_first_result(
    storage: Storage,
) -> None:
    await storage.create_user("tight", 1, T0)
    # Two API processes: each has its own writer, so on PostgreSQL both transactions are in flight.
    clients = (
        [storage, SqlStorage(storage.engine.url.render_as_string(False))]
        if is_postgres(storage)
        else [storage] * 2
    )

    async def create(n: int) -> str:
        new = new_generation("tight", key="retry-after-timeout")
        created, _ = await retrying(lambda: clients[n].debit_and_enqueue(new))
        return created.id

    with holding_user_row(storage, "tight"):
        creates = [asyncio.create_task(create(n)) for n in range(2)]
        await wait_for_lock_waiters(storage, 2)
    async with asyncio.timeout(60):
        results = await asyncio.gather(*creates)
    if clients[1] is not storage:
        await clients[1].close()

    assert results[0] == results[1]
    assert await balance(storage, "tight") == 0


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


async def wait_for_lock_waiters(storage: Storage, count: int, timeout: float = 15.0) -> None:
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
            await asyncio.sleep(0.02)  # the creates, on the loop, get to send their statements
            conn.rollback()
