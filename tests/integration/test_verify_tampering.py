"""The audit (`violations()`, what `imagegen verify` reports) finds writes that went around the
port, and the schema refuses the worst ones.

These tests tamper with the SQL tables directly through `storage.engine` (the only tests that do),
as a careless operator or a buggy migration would, then expect a violation naming the invariant.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from imagegen.domain.audit import Violation
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import T0, finished


def tamper(storage: SqlStorage, sql: str, **params: Any) -> int:
    with storage.engine.begin() as conn:
        return conn.execute(text(sql), params).rowcount


async def violations(storage: SqlStorage) -> list[Violation]:
    return await storage.violations()


@pytest.fixture
async def history(storage: SqlStorage) -> dict[Status, GenerationRequest]:
    """One request in each end state (and one pending), and a clean audit to start from."""
    made = {
        status: await finished(storage, status, T0)
        for status in (Status.COMPLETED, Status.FAILED, Status.CANCELED)
    }
    made[Status.PENDING] = await finished(storage, Status.PENDING, T0)
    assert await violations(storage) == []
    return made


async def test_a_balance_raised_without_a_ledger_entry_breaks_invariant_1(
    storage: SqlStorage, history: dict[Status, GenerationRequest]
) -> None:
    tamper(storage, "UPDATE users SET credits = credits + 5 WHERE id = 'testUser1'")

    [violation] = await violations(storage)

    assert (violation.invariant, violation.subject) == (1, "testUser1")
    assert "ledger sums to" in violation.message


async def test_a_deleted_refund_breaks_invariants_1_and_3(
    storage: SqlStorage, history: dict[Status, GenerationRequest]
) -> None:
    failed = history[Status.FAILED]
    deleted = tamper(
        storage,
        "DELETE FROM ledger_entries WHERE generation_request_id = :id AND type = 'refund'",
        id=failed.id,
    )
    assert deleted == 1

    found = {(v.invariant, v.subject) for v in await violations(storage)}

    assert found == {(1, "testUser1"), (3, failed.id)}


async def test_the_database_refuses_a_second_refund_for_one_request(
    storage: SqlStorage, history: dict[Status, GenerationRequest]
) -> None:
    canceled = history[Status.CANCELED]

    with pytest.raises(IntegrityError):
        tamper(
            storage,
            "INSERT INTO ledger_entries (id, user_id, type, delta, balance_after, generation_request_id, "
            "reason, created_at) VALUES ('second-refund', 'testUser1', 'refund', 1, 101, :id, 'again', "
            ":at)",
            id=canceled.id,
            at=T0.replace(tzinfo=None),
        )

    assert await violations(storage) == []


async def test_the_database_refuses_a_negative_balance(
    storage: SqlStorage, history: dict[Status, GenerationRequest]
) -> None:
    with pytest.raises(IntegrityError):
        tamper(storage, "UPDATE users SET credits = -1 WHERE id = 'testUser2'")


async def test_a_pending_request_without_its_deduction_breaks_invariant_2(
    storage: SqlStorage, history: dict[Status, GenerationRequest]
) -> None:
    pending = history[Status.PENDING]
    tamper(storage, "DELETE FROM ledger_entries WHERE generation_request_id = :id", id=pending.id)
    tamper(storage, "UPDATE users SET credits = credits + 1 WHERE id = 'testUser1'")

    [violation] = await violations(storage)

    assert (violation.invariant, violation.subject) == (2, pending.id)


async def test_a_deduction_whose_request_was_deleted_breaks_invariant_2(
    storage: SqlStorage, history: dict[Status, GenerationRequest]
) -> None:
    completed = history[Status.COMPLETED]
    tamper(storage, "DELETE FROM generation_requests WHERE id = :id", id=completed.id)

    [violation] = await violations(storage)

    assert violation.invariant == 2
    assert completed.id in violation.message


async def test_a_completed_request_marked_failed_without_a_refund_breaks_invariant_3(
    storage: SqlStorage, history: dict[Status, GenerationRequest]
) -> None:
    completed = history[Status.COMPLETED]
    tamper(storage, "UPDATE generation_requests SET status = 'failed' WHERE id = :id", id=completed.id)

    [violation] = await violations(storage)

    assert (violation.invariant, violation.subject) == (3, completed.id)
    assert "expected one deduction of 1 and one refund" in violation.message


async def test_a_deduction_of_the_wrong_amount_breaks_invariant_3(
    storage: SqlStorage, history: dict[Status, GenerationRequest]
) -> None:
    completed = history[Status.COMPLETED]
    tamper(storage, "UPDATE generation_requests SET cost = 3 WHERE id = :id", id=completed.id)

    [violation] = await violations(storage)

    assert (violation.invariant, violation.subject) == (3, completed.id)
