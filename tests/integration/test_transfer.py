"""JSONL export and import: a database moved through the case study's format comes back the same.

The pipeline is the CLI's: `export_records` -> `to_case_study` -> JSON lines -> `parse_lines` ->
`import_records`. The source or the target is the parametrized `database_url` (SQLite and
PostgreSQL); the other side is a second SQLite file under tmp_path.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from imagegen.domain import reports
from imagegen.domain.errors import InvalidInput
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.ports import Storage
from imagegen.service.transfer import parse_lines, to_case_study
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import (
    LEASE,
    T0,
    balance,
    claim,
    exported,
    finished,
    lease,
    records_by_collection,
    whole_ledger,
)
from tests.support import load_initial_data

LATER = T0 + timedelta(days=30)


@pytest.fixture
async def second(tmp_path: Path) -> AsyncIterator[SqlStorage]:
    """A migrated SQLite database with no data at all, not even the initial data set."""
    storage = SqlStorage(f"sqlite:///{tmp_path / 'second.db'}")
    await storage.migrate()
    yield storage
    await storage.close()


@pytest.fixture
async def empty(database_url: str) -> AsyncIterator[SqlStorage]:
    """The parametrized backend, migrated but empty."""
    storage = SqlStorage(database_url)
    await storage.migrate()
    yield storage
    await storage.close()


async def export_lines(storage: Storage) -> list[str]:
    return [json.dumps(to_case_study(record)) async for record in storage.export_records()]


async def import_lines(storage: Storage, lines: list[str]) -> dict[str, int]:
    return await storage.import_records(parse_lines(lines), LATER)


async def populate(storage: Storage) -> None:
    """Users, every kind of ledger entry, requests in every end state, and a stored report."""
    await storage.create_user("alice", 20, T0)
    await storage.create_user("zero", 0, T0)
    await storage.move_credits("alice", EntryType.GRANT, 5, "promo", T0)
    await storage.move_credits("alice", EntryType.ADJUSTMENT, -3, "chargeback", T0)
    await finished(storage, Status.COMPLETED, T0, user_id="alice", size="1024x1024")
    await finished(storage, Status.FAILED, T0 + timedelta(hours=1), model="model-b")
    await finished(storage, Status.CANCELED, T0 + timedelta(hours=2), user_id="testUser2")
    await finished(storage, Status.PENDING, T0 + timedelta(hours=3), size="1024x1792")
    week = reports.iso_week("2026-W47")
    report = {"id": "2026-W47", "periodStart": week.start.isoformat(), "periodEnd": week.end.isoformat()}
    await storage.save_report(
        "2026-W47", {**report, "totalRequests": 4, "byModel": {"model-a": {"total": 3}}}, T0
    )


async def snapshot(storage: Storage) -> dict[str, Any]:
    """What a user of the database sees: balances, ledgers, requests and reports."""
    records = await exported(storage)
    users = sorted(r["id"] for r in records if r["collection"] == "users")
    return {
        "balances": {user_id: await balance(storage, user_id) for user_id in users},
        "ledgers": {user_id: await whole_ledger(storage, user_id) for user_id in users},
        "requests": [r for r in records if r["collection"] == "generationRequests"],
        "reports": [r for r in records if r["collection"] == "reports"],
    }


async def test_a_database_exported_and_imported_into_a_fresh_one_has_the_same_balances_and_ledger(
    storage: SqlStorage, second: SqlStorage
) -> None:
    await populate(storage)

    counts = await import_lines(second, await export_lines(storage))

    assert counts == {
        "users": 4,
        "generationRequests": 4,
        "transactions": len(await whole_ledger(storage, "testUser1"))
        + len(await whole_ledger(storage, "testUser2"))
        + len(await whole_ledger(storage, "alice")),
        "reports": 1,
        "models": 2,
        "usersCreatedAsReferenced": 0,
    }
    assert await snapshot(second) == await snapshot(storage)
    assert await second.get_report("2026-W47") == await storage.get_report("2026-W47")
    assert await second.violations() == []


async def test_importing_into_the_parametrized_backend_gives_the_same_balances_and_ledger(
    tmp_path: Path, empty: SqlStorage
) -> None:
    source = SqlStorage(f"sqlite:///{tmp_path / 'source.db'}")
    await source.migrate()
    await load_initial_data(source)
    await populate(source)

    await import_lines(empty, await export_lines(source))

    assert await snapshot(empty) == await snapshot(source)
    assert await empty.violations() == []
    await source.close()


async def test_importing_the_same_file_twice_changes_nothing(storage: SqlStorage, second: SqlStorage) -> None:
    await populate(storage)
    lines = await export_lines(storage)
    await import_lines(second, lines)
    once = await snapshot(second)

    counts = await import_lines(second, lines)

    assert set(counts.values()) == {0}
    assert await snapshot(second) == once
    assert await second.violations() == []


async def test_an_imported_pending_request_is_run_by_the_new_databases_workers(
    storage: SqlStorage, second: SqlStorage
) -> None:
    await populate(storage)
    await import_lines(second, await export_lines(storage))

    job = await claim(second, "w-new", LATER)
    assert await second.complete(job.id, "w-new", "/images/new.png", LATER)

    assert (await second.get_request(job.id)).status is Status.COMPLETED  # type: ignore[union-attr]
    assert await second.violations() == []


async def test_a_request_running_at_export_time_is_finished_in_the_new_database(
    storage: SqlStorage, second: SqlStorage
) -> None:
    await finished(storage, Status.PENDING, T0)
    running = await claim(storage, "w-old", T0)  # w-old lives in the old deployment: it never reports back
    await import_lines(second, await export_lines(storage))

    for expired in await second.expired_jobs(LATER + LEASE):  # what the recovery does with it
        await second.requeue(expired.id, LATER + LEASE)
    job = await second.claim_job(lease("w-new", LATER + LEASE), LATER + LEASE)
    if job is not None:
        assert job.id == running.id
        assert await second.complete(job.id, "w-new", "/images/new.png", LATER + LEASE)

    moved = await second.get_request(running.id)
    assert moved is not None and moved.status.terminal
    assert await second.violations() == []


async def test_a_referenced_but_missing_user_is_created_with_no_credits(empty: SqlStorage) -> None:
    request = {
        "collection": "generationRequests",
        "id": "req-ghost-1",
        "userId": "ghost",
        "model": "model-a",
        "style": "anime",
        "color": "vibrant",
        "size": "512x512",
        "prompt": "",
        "status": "completed",
        "cost": 1,
        "createdAt": "2026-11-16T09:00:00Z",
    }

    counts = await import_lines(empty, [json.dumps(request)])

    assert counts["usersCreatedAsReferenced"] == 1
    assert counts["generationRequests"] == 1
    assert await balance(empty, "ghost") == 0
    assert (await empty.get_request("req-ghost-1")).status is Status.COMPLETED  # type: ignore[union-attr]
    assert await empty.violations() == []


async def test_a_user_referenced_before_its_own_line_ends_with_the_balance_that_line_gives(
    empty: SqlStorage,
) -> None:
    grant = {
        "collection": "transactions",
        "id": "entry-1",
        "userId": "late",
        "type": "grant",
        "credits": 8,
        "timestamp": "2026-11-16T09:00:00Z",
    }
    user = {"collection": "users", "id": "late", "credits": 8, "createdAt": "2026-11-16T09:00:00Z"}

    await import_lines(empty, [json.dumps(grant), json.dumps(user)])

    assert await balance(empty, "late") == 8
    assert [e.id for e in await whole_ledger(empty, "late")] == ["entry-1"]
    assert await empty.violations() == []


async def test_an_imported_unfinished_request_that_was_never_debited_is_never_refunded(
    empty: SqlStorage,
) -> None:
    user = {"collection": "users", "id": "hist", "credits": 0}
    stuck = {
        "collection": "generationRequests",
        "id": "stuck-1",
        "userId": "hist",
        "model": "model-a",
        "style": "anime",
        "color": "vibrant",
        "size": "1024x1792",
        "status": "pending",
        "cost": 4,
        "createdAt": "2026-11-16T09:00:00Z",
    }
    await import_lines(empty, [json.dumps(user), json.dumps(stuck)])

    job = await empty.claim_job(lease("w-new", LATER), LATER)
    if job is not None:  # a worker of the new database picks it up, and the model fails
        await empty.fail_and_refund(job.id, "model failed", LATER, worker_id="w-new")

    assert await balance(empty, "hist") == 0
    assert await empty.violations() == []


def many_lines(count: int) -> list[str]:
    """A users line and then `count` historical completed requests: more than one import batch."""
    lines = [json.dumps({"collection": "users", "id": "bulk", "credits": 3})]
    for n in range(count):
        request = {
            "collection": "generationRequests",
            "id": f"bulk-{n}",
            "userId": "bulk" if n % 2 else f"bulk-user-{n}",
            "model": "model-a",
            "style": "anime",
            "color": "vibrant",
            "size": "512x512",
            "status": "completed",
            "cost": 1,
            "createdAt": "2026-11-16T09:00:00Z",
        }
        lines.append(json.dumps(request))
    return lines


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        json.dumps({"collection": "generationRequests", "id": "bad", "status": "exploded"}),
    ],
    ids=["not-json", "invalid-request"],
)
async def test_a_bad_line_aborts_the_import_and_nothing_of_the_file_is_imported(
    storage: SqlStorage, bad: str
) -> None:
    lines = many_lines(1100)
    lines[1050] = bad  # after the SQL adapter wrote its first batch of 1000 records
    before = await records_by_collection(storage)

    with pytest.raises(InvalidInput, match="line 1051"):
        await import_lines(storage, lines)

    assert await records_by_collection(storage) == before
    assert await storage.get_user("bulk") is None
    assert await storage.get_request("bulk-1") is None


async def test_a_file_of_more_than_one_batch_imports_whole(empty: SqlStorage) -> None:
    counts = await import_lines(empty, many_lines(1100))

    assert counts["generationRequests"] == 1100
    assert counts["users"] + counts["usersCreatedAsReferenced"] == 551
    assert await balance(empty, "bulk") == 3
    assert await empty.violations() == []


async def test_an_import_that_would_take_an_existing_balance_below_zero_is_refused_as_invalid_input(
    storage: SqlStorage,
) -> None:
    grant = {
        "collection": "transactions",
        "id": "fine",
        "userId": "newcomer",
        "type": "grant",
        "credits": 5,
        "timestamp": "2026-11-16T09:00:00Z",
    }
    overdraft = {
        "collection": "transactions",
        "id": "overdraft",
        "userId": "testUser2",
        "type": "adjustment",
        "credits": -11,
        "timestamp": "2026-11-16T09:00:00Z",
    }
    before = await records_by_collection(storage)

    with pytest.raises(InvalidInput, match="testUser2"):
        await import_lines(storage, [json.dumps(grant), json.dumps(overdraft)])

    assert await records_by_collection(storage) == before
    assert await balance(storage, "testUser2") == 10
    assert await storage.get_user("newcomer") is None
