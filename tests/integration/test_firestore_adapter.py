"""The Firestore adapter beyond the shared contract: contention between processes, import guarantees,
the audit, and port methods the contract suite does not reach yet (these run on every backend).

Firestore-only tests use `firestore`, an emptied emulator with the initial data set; the others use
the shared `storage` fixture (SQLite, PostgreSQL, Firestore).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.firestore", reason="the Firestore tests need google-cloud-firestore")
from google.api_core import exceptions as gexc
from google.cloud import firestore as firestore_module

from imagegen.domain import reports
from imagegen.domain.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    StaleConfig,
    StorageUnavailable,
    TooManyRequests,
)
from imagegen.domain.generation import NewGeneration, Status
from imagegen.domain.idempotency import StoredResponse
from imagegen.domain.ledger import NO_FILTER, EntryType, LedgerFilter
from imagegen.ports import Lease, Storage
from imagegen.storage import open_storage_adapter
from imagegen.storage.firestore import FirestoreStorage
from imagegen.storage.sql.adapter import SqlStorage
from tests.firestore_emulator import PROJECT
from tests.integration.builders import T0, balance, claim, enqueue, new_generation, whole_ledger
from tests.integration.test_transfer import export_lines, import_lines, populate, snapshot
from tests.support import free_port, load_initial_data

MINUTE = timedelta(minutes=1)


@pytest.fixture
async def firestore(firestore_clean: str) -> AsyncIterator[FirestoreStorage]:
    storage = FirestoreStorage(PROJECT)
    await storage.migrate()
    await load_initial_data(storage)
    yield storage
    await storage.close()


async def sqlite(tmp_path: Path, name: str, *, initial_data: bool = False) -> SqlStorage:
    storage = SqlStorage(f"sqlite:///{tmp_path / name}")
    await storage.migrate()
    if initial_data:
        await load_initial_data(storage)
    return storage


# -- contention between processes: separate clients, so nothing queues in-process -----------------------
def four_processes() -> list[FirestoreStorage]:
    return [FirestoreStorage(PROJECT) for _ in range(4)]


async def race(stores: list[FirestoreStorage], work: Any) -> list[Any]:
    """Each process's work at once (each store has its own client and threads)."""
    async with asyncio.timeout(240):
        return list(await asyncio.gather(*(work(store, n) for n, store in enumerate(stores))))


async def assert_chain(storage: Storage, user_id: str) -> None:
    running = 0
    for entry in reversed(await whole_ledger(storage, user_id)):
        running += entry.delta
        assert entry.balance_after == running
    assert running == await balance(storage, user_id)


async def retried(call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """As a client retries a 503: contention that outlasted the adapter's own retries wrote nothing."""
    for _ in range(10):
        try:
            return await call(*args, **kwargs)
        except StorageUnavailable:
            continue
    return await call(*args, **kwargs)


async def test_four_processes_spending_one_users_credits_never_overdraw_and_lose_no_update(
    firestore: FirestoreStorage,
) -> None:
    await firestore.create_user("spender", 10, T0)
    stores = four_processes()

    async def spend(store: FirestoreStorage, _: int) -> Counter[str]:
        outcome: Counter[str] = Counter()
        attempts = 4
        while attempts:
            try:
                await store.debit_and_enqueue(new_generation("spender"))
                outcome["debited"] += 1
            except InsufficientCredits:
                outcome["refused"] += 1
            except (StorageUnavailable, TooManyRequests):  # contention outlasted the adapter's
                continue  # retries: nothing was written, and a client would retry the same way
            attempts -= 1
        return outcome

    outcome = sum(await race(stores, spend), Counter())

    assert outcome == {"debited": 10, "refused": 6}
    assert await balance(firestore, "spender") == 0
    await assert_chain(firestore, "spender")
    assert await firestore.violations() == []
    for store in stores:
        await store.close()


async def test_four_processes_granting_and_refunding_one_user_keep_ledger_and_balance_in_step(
    firestore: FirestoreStorage,
) -> None:
    requests = [await enqueue(firestore, created_at=T0 + MINUTE * n) for n in range(4)]
    stores = four_processes()

    async def move(store: FirestoreStorage, n: int) -> bool:
        await retried(store.move_credits, "testUser1", EntryType.GRANT, 1, "top-up", T0)
        return bool(await retried(store.cancel_and_refund, requests[n].id, T0))

    assert all(await race(stores, move))
    assert await balance(firestore, "testUser1") == 104
    await assert_chain(firestore, "testUser1")
    assert await firestore.violations() == []
    for store in stores:
        await store.close()


async def test_a_second_refund_for_a_request_cannot_be_written(firestore: FirestoreStorage) -> None:
    request = await enqueue(firestore)
    assert await firestore.cancel_and_refund(request.id, T0)
    refund = firestore.db.collection("users", "testUser1", "transactions").document(f"{request.id}_refund")

    with pytest.raises(gexc.AlreadyExists):
        refund.create({"type": "refund", "delta": 1})


# -- leases and imports ---------------------------------------------------------------------------------
async def test_a_heartbeat_extends_only_the_request_and_worker_pairs_it_names(
    firestore: FirestoreStorage,
) -> None:
    await enqueue(firestore, created_at=T0)
    await enqueue(firestore, created_at=T0 + MINUTE)
    taken_over = await claim(firestore, "w-b", T0)
    own = await claim(firestore, "w-b", T0)

    assert await firestore.extend_leases({taken_over.id: "w-a", own.id: "w-b"}, T0 + 10 * MINUTE) == 1
    assert [j.id for j in await firestore.expired_jobs(T0 + 5 * MINUTE)] == [taken_over.id]


async def test_an_import_that_would_overdraw_an_existing_user_is_refused_whole(
    firestore: FirestoreStorage,
) -> None:
    grant = {"collection": "transactions", "id": "fine", "userId": "newcomer", "type": "grant", "credits": 5}
    overdraft = {"collection": "transactions", "id": "over", "userId": "testUser2", "type": "adjustment"}
    lines = [
        json.dumps({**grant, "timestamp": "2026-11-16T09:00:00Z"}),
        json.dumps({**overdraft, "credits": -11, "timestamp": "2026-11-16T09:00:00Z"}),
    ]

    with pytest.raises(InvalidInput, match="testUser2"):
        await import_lines(firestore, lines)

    assert await balance(firestore, "testUser2") == 10
    assert await firestore.get_user("newcomer") is None


# -- moving data between SQL and Firestore -------------------------------------------------------------------
async def test_a_database_moved_from_sql_to_firestore_and_back_is_the_same(
    firestore_clean: str, tmp_path: Path
) -> None:
    source = await sqlite(tmp_path, "source.db", initial_data=True)
    await populate(source)
    target = FirestoreStorage(PROJECT)

    await import_lines(target, await export_lines(source))
    back = await sqlite(tmp_path, "back.db")
    await import_lines(back, await export_lines(target))

    assert await snapshot(target) == await snapshot(source)
    assert await snapshot(back) == await snapshot(source)
    assert await target.get_report("2026-W47") == await source.get_report("2026-W47")
    assert await target.violations() == []
    assert await back.violations() == []


async def test_an_import_of_many_batches_and_users_imports_whole(firestore_clean: str) -> None:
    target = FirestoreStorage(PROJECT)
    lines = [json.dumps({"collection": "users", "id": "bulk", "credits": 3})]
    for n in range(900):
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

    counts = await import_lines(target, lines)

    assert counts == {
        "users": 1,
        "usersCreatedAsReferenced": 450,
        "generationRequests": 900,
        "transactions": 0,
        "reports": 0,
        "models": 0,
    }
    assert await balance(target, "bulk") == 3
    assert [e.reason for e in await whole_ledger(target, "bulk")] == ["import: opening balance"]
    assert await target.violations() == []
    assert set((await import_lines(target, lines)).values()) == {0}


async def test_an_import_interrupted_while_writing_completes_when_run_again(
    firestore_clean: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = await sqlite(tmp_path, "source.db", initial_data=True)
    await populate(source)
    lines = await export_lines(source)
    target = FirestoreStorage(PROJECT)

    with monkeypatch.context() as patch:
        users_unreachable(patch)
        with pytest.raises(StorageUnavailable):
            await import_lines(target, lines)
    assert await target.get_user("alice") is None  # its entries are written, its document is not: invisible
    assert await target.violations() == []

    await import_lines(target, lines)

    assert await snapshot(target) == await snapshot(source)
    assert await target.violations() == []


def users_unreachable(patch: pytest.MonkeyPatch) -> None:
    """Firestore goes away (UNAVAILABLE) at the first commit that would create a user document."""
    real_create, real_commit = firestore_module.WriteBatch.create, firestore_module.WriteBatch.commit
    creating_users: set[int] = set()

    def create(batch: Any, ref: Any, data: Any) -> Any:
        if ref.parent.id == "users" and ref.parent.parent is None:
            creating_users.add(id(batch))
        return real_create(batch, ref, data)

    def commit(batch: Any, *args: Any, **kwargs: Any) -> Any:
        if id(batch) in creating_users:
            raise gexc.ServiceUnavailable("simulated outage")
        return real_commit(batch, *args, **kwargs)

    patch.setattr(firestore_module.WriteBatch, "create", create)
    patch.setattr(firestore_module.WriteBatch, "commit", commit)


# -- the audit finds writes that went around the port -------------------------------------------------------
async def test_the_audit_finds_a_balance_raised_a_refund_deleted_and_a_request_deleted(
    firestore: FirestoreStorage,
) -> None:
    failed = await enqueue(firestore)
    await claim(firestore, "w-1")
    assert await firestore.fail_and_refund(failed.id, "model failed", T0, worker_id="w-1")
    done = await enqueue(firestore, "testUser2")
    assert await firestore.violations() == []
    db = firestore.db

    db.collection("users").document("testUser2").update({"credits": 15})
    db.collection("users", "testUser1", "transactions").document(f"{failed.id}_refund").delete()
    db.collection("generationRequests").document(done.id).delete()

    found = {(v.invariant, v.subject) for v in await firestore.violations()}
    assert found == {(1, "testUser2"), (1, "testUser1"), (3, failed.id), (2, f"{done.id}_deduction")}


# -- selection and failure ---------------------------------------------------------------------------
async def test_a_firestore_url_opens_the_firestore_adapter(firestore_clean: str) -> None:
    storage = open_storage_adapter(f"firestore://{PROJECT}")
    assert isinstance(storage, FirestoreStorage) and storage.project == PROJECT
    await storage.ping()
    with pytest.raises(InvalidInput):
        open_storage_adapter("firestore://")


async def test_an_unreachable_firestore_is_storage_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    storage = FirestoreStorage(PROJECT)
    with pytest.raises(StorageUnavailable):
        await storage.ping()


# -- port methods the contract suite does not cover yet: on every backend ------------------------------------
async def test_an_idempotency_key_is_new_then_busy_then_replayed(storage: Storage) -> None:
    lock = T0 + MINUTE
    assert (await storage.begin_idempotent("testUser1", "k", "fp", T0, lock)).state == "new"
    assert (await storage.begin_idempotent("testUser1", "k", "fp", T0, lock)).state == "busy"
    with pytest.raises(IdempotencyConflict):
        await storage.begin_idempotent("testUser1", "k", "other", T0, lock)
    response = StoredResponse(201, {"id": "x", "list": [[1, 2]]}, {"location": "/v1/x"})
    await storage.finish_idempotent("testUser1", "k", response)

    replay = await storage.begin_idempotent("testUser1", "k", "fp", T0 + 2 * MINUTE, lock)

    assert (replay.state, replay.response) == ("replay", response)
    assert (await storage.begin_idempotent("admin", "k", "fp", T0, lock)).state == "new"  # another scope
    await storage.release_idempotent("admin", "k")
    assert (await storage.begin_idempotent("admin", "k", "fp", T0, lock)).state == "new"
    assert await storage.purge_idempotency(T0 + MINUTE) == 2
    assert (await storage.begin_idempotent("testUser1", "k", "fp", T0, lock)).state == "new"


async def test_a_stale_in_progress_key_is_taken_over(storage: Storage) -> None:
    assert (await storage.begin_idempotent("u", "k", "fp", T0, T0 + MINUTE)).state == "new"
    assert (await storage.begin_idempotent("u", "k", "fp", T0 + 2 * MINUTE, T0 + 3 * MINUTE)).state == "new"


async def test_webhook_deliveries_are_written_with_the_state_change_and_claimed_once(
    storage: Storage,
) -> None:
    events = frozenset({"start", "completed"})
    await storage.debit_and_enqueue(
        replace(new_generation(), webhook="https://example.test/h", webhook_events=events)
    )
    job = await claim(storage, "w-1", T0)
    assert await storage.complete(job.id, "w-1", "/images/x.png", T0)

    claimed = await storage.claim_webhooks(T0, T0 + MINUTE, limit=10)

    assert sorted(d.event for d in claimed) == ["completed", "start"]
    assert {d.payload["type"] for d in claimed} == {"generation.start", "generation.completed"}
    assert all(d.attempts == 1 and d.generation_request_id == job.id for d in claimed)
    assert await storage.claim_webhooks(T0, T0 + MINUTE, limit=10) == []  # leased
    start = next(d for d in claimed if d.event == "start")
    await storage.webhook_delivered(start.id, T0)
    completed = next(d for d in claimed if d.event == "completed")
    await storage.webhook_failed(completed.id, "receiver answered 500", T0 + 2 * MINUTE)
    [retry] = await storage.claim_webhooks(T0 + 3 * MINUTE, T0 + 4 * MINUTE, limit=10)
    assert (retry.id, retry.attempts) == (completed.id, 2)


async def test_api_keys_are_found_by_hash_until_revoked(storage: Storage) -> None:
    await storage.add_api_key("key-1", "hash-1", "testUser1", T0)
    found = await storage.find_api_key("hash-1")
    assert found is not None and (found.id, found.user_id) == ("key-1", "testUser1")
    assert await storage.revoke_api_key("key-1", T0)
    assert not await storage.revoke_api_key("key-1", T0)
    assert await storage.find_api_key("hash-1") is None


async def test_meta_is_stored_once(storage: Storage) -> None:
    assert await storage.get_meta("color") is None
    assert await storage.put_meta_once("color", "blue") == "blue"
    assert await storage.put_meta_once("color", "red") == "blue"
    assert await storage.get_meta("color") == "blue"


async def test_reports_list_newest_period_first_in_pages(storage: Storage) -> None:
    for week in ("2026-W45", "2026-W46", "2026-W47"):
        period = reports.iso_week(week)
        document = {"id": week, "periodStart": period.start.isoformat(), "periodEnd": period.end.isoformat()}
        await storage.save_report(week, document, T0)

    first = await storage.list_reports(2, None)
    rest = await storage.list_reports(2, first.next_cursor)

    assert [r["id"] for r in first.items] == ["2026-W47", "2026-W46"]
    assert [r["id"] for r in rest.items] == ["2026-W45"] and rest.next_cursor is None


async def test_the_ledger_filters_by_type_and_time_and_pages(storage: Storage) -> None:
    await storage.create_user("f", 0, T0)
    for n in range(6):
        await storage.move_credits("f", EntryType.GRANT, 2, f"g{n}", T0 + MINUTE * n)
        await storage.move_credits("f", EntryType.ADJUSTMENT, -1, f"a{n}", T0 + MINUTE * n)
    window = LedgerFilter(frozenset({EntryType.GRANT}), since=T0 + MINUTE, until=T0 + 5 * MINUTE)

    first = await storage.ledger("f", 3, None, window)
    rest = await storage.ledger("f", 3, first.next_cursor, window)

    assert [e.reason for e in first.items + rest.items] == ["g4", "g3", "g2", "g1"]
    assert rest.next_cursor is None
    assert await storage.ledger_totals("f") == {EntryType.GRANT: 12, EntryType.ADJUSTMENT: -6}
    assert len((await storage.ledger("f", 100, None, NO_FILTER)).items) == 12


async def test_requests_of_every_user_list_by_status(storage: Storage) -> None:
    await enqueue(storage, created_at=T0)
    await enqueue(storage, "testUser2", created_at=T0 + MINUTE)
    await claim(storage, "w-1", T0)

    running = await storage.list_requests(None, Status.RUNNING, 10, None)
    pending = await storage.list_requests(None, Status.PENDING, 10, None)

    assert [r.user_id for r in running.items] == ["testUser1"]
    assert [r.user_id for r in pending.items] == ["testUser2"]
    assert await storage.earliest_request_at() == T0


# -- the create path of the Cloud Functions: claimed at creation, priced under a configuration version ---
def limited(user_id: str, limit: int) -> NewGeneration:
    return replace(new_generation(user_id), max_in_flight=limit)


async def assert_in_flight(storage: FirestoreStorage, user_id: str, count: int, limit: int = 3) -> None:
    """The user counts `count` requests in flight: exactly limit - count more may queue."""
    for _ in range(limit - count):
        await storage.debit_and_enqueue(limited(user_id, limit))
    with pytest.raises(TooManyRequests):
        await storage.debit_and_enqueue(limited(user_id, limit))


async def test_a_request_claimed_at_its_creation_runs_under_its_creators_lease(
    firestore: FirestoreStorage,
) -> None:
    version = await firestore.config_version()
    created, fresh = await firestore.debit_and_enqueue(
        new_generation(), version, Lease("instance-1", T0 + MINUTE)
    )

    assert fresh and created.status is Status.RUNNING and created.attempts == 1
    assert await firestore.claim_job(Lease("another", T0 + MINUTE), T0) is None  # nothing is left to claim
    assert await firestore.expired_jobs(T0 + 2 * MINUTE) == [await firestore.get_request(created.id)]
    assert await firestore.complete(created.id, "instance-1", "/images/x.png", T0)
    assert not await firestore.complete(created.id, "instance-1", "/images/x.png", T0)  # once
    assert await balance(firestore, "testUser1") == 99
    await assert_in_flight(firestore, "testUser1", 0)
    assert await firestore.violations() == []


async def test_a_create_priced_under_an_older_configuration_is_refused_with_nothing_written(
    firestore: FirestoreStorage,
) -> None:
    versions = [await firestore.config_version()]
    await firestore.put_option("sizes", "512x512", enabled=True, cost=2)
    versions.append(await firestore.config_version())
    model = await firestore.model_settings("model-a")
    assert model is not None
    await firestore.put_model(replace(model, latency_ms=10))
    versions.append(await firestore.config_version())
    key = await firestore.add_api_key("key-new", "hash-new", "testUser1", T0)
    assert await firestore.config_version() == versions[-1]  # a new key needs no refresh: it is not cached
    await firestore.revoke_api_key(key.id, T0)
    versions.append(await firestore.config_version())

    with pytest.raises(StaleConfig):
        await firestore.debit_and_enqueue(new_generation(), versions[0], Lease("instance-1", T0 + MINUTE))

    assert len(set(versions)) == 4
    version, catalog = await firestore.config_snapshot()
    assert version == versions[-1] and catalog.cost_of("512x512") == 2
    assert await balance(firestore, "testUser1") == 100
    assert (await firestore.list_requests("testUser1", None, 10, None)).items == []


async def test_one_idempotency_key_gives_one_request_whichever_instance_creates_it(
    firestore: FirestoreStorage,
) -> None:
    stores = four_processes()

    async def create(store: FirestoreStorage, n: int) -> tuple[str, bool]:
        new = new_generation(key="once", fingerprint="same body")
        request, fresh = await retried(
            store.debit_and_enqueue, new, claim=Lease(f"instance-{n}", T0 + MINUTE)
        )
        return request.id, fresh

    outcomes = await race(stores, create)

    assert len({request_id for request_id, _ in outcomes}) == 1
    assert sum(fresh for _, fresh in outcomes) == 1
    assert await balance(firestore, "testUser1") == 99
    with pytest.raises(IdempotencyConflict):
        other = new_generation(key="once", fingerprint="other body")
        await firestore.debit_and_enqueue(other, claim=Lease("i", T0))
    for store in stores:
        await store.close()


async def test_a_database_from_before_the_in_flight_counts_gets_them_from_its_requests(
    firestore: FirestoreStorage,
) -> None:
    keyed = await enqueue(firestore, key="before", fingerprint="body")
    await enqueue(firestore)
    done = await claim(firestore, "w", T0)
    await firestore.complete(done.id, "w", "/images/x.png", T0)
    db = firestore.db  # as schema 1 left it: no counters, no key documents
    db.collection("users").document("testUser1").update({"inFlight": firestore_module.DELETE_FIELD})
    for snap in db.collection("generationKeys").stream():
        snap.reference.delete()
    db.collection("meta").document("schema").set({"version": 1})

    await firestore.migrate()

    await assert_in_flight(firestore, "testUser1", 1)
    replayed, fresh = await firestore.debit_and_enqueue(new_generation(key="before", fingerprint="body"))
    assert (replayed.id, fresh) == (keyed.id, False)
    assert await firestore.violations() == []


async def test_imported_requests_still_in_flight_count_against_the_limit(
    firestore_clean: str, tmp_path: Path
) -> None:
    source = await sqlite(tmp_path, "source.db", initial_data=True)
    await populate(source)  # testUser1 has one pending request
    target = FirestoreStorage(PROJECT)

    await import_lines(target, await export_lines(source))

    await assert_in_flight(target, "testUser1", 1)
    await assert_in_flight(target, "alice", 0)
