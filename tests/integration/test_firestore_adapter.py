"""The Firestore adapter beyond the shared contract: contention between processes, import guarantees,
the audit, and port methods the contract suite does not reach yet (these run on every backend).

Firestore-only tests use `firestore`, an emptied emulator with the initial data set; the others use
the shared `storage` fixture (SQLite, PostgreSQL, Firestore).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.firestore", reason="the Firestore tests need google-cloud-firestore")
from google.api_core import exceptions as gexc
from google.cloud import firestore as firestore_module

from imagegen import service
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
from imagegen.ports import Storage
from imagegen.storage import open_storage_adapter
from imagegen.storage.firestore import FirestoreStorage
from imagegen.storage.firestore import transfer as firestore_transfer
from imagegen.storage.sql.adapter import SqlStorage
from tests.firestore_emulator import PROJECT
from tests.integration.builders import T0, balance, claim, enqueue, new_generation, whole_ledger
from tests.integration.test_transfer import export_lines, import_lines, populate, snapshot
from tests.support import free_port

MINUTE = timedelta(minutes=1)


@pytest.fixture
def firestore(firestore_clean: str) -> Iterator[FirestoreStorage]:
    storage = FirestoreStorage(PROJECT)
    storage.migrate()
    service.first_start(storage, T0)
    yield storage
    storage.close()


def sqlite(tmp_path: Path, name: str) -> SqlStorage:
    storage = SqlStorage(f"sqlite:///{tmp_path / name}")
    storage.migrate()
    return storage


# -- contention between processes: separate clients, so nothing queues in-process -----------------------
def four_processes() -> list[FirestoreStorage]:
    return [FirestoreStorage(PROJECT) for _ in range(4)]


def race(stores: list[FirestoreStorage], work: Any) -> list[Any]:
    barrier = threading.Barrier(len(stores), timeout=30)

    def start(n: int) -> Any:
        barrier.wait()
        return work(stores[n], n)

    with ThreadPoolExecutor(len(stores)) as pool:
        return [f.result(timeout=240) for f in [pool.submit(start, n) for n in range(len(stores))]]


def assert_chain(storage: Storage, user_id: str) -> None:
    running = 0
    for entry in reversed(whole_ledger(storage, user_id)):
        running += entry.delta
        assert entry.balance_after == running
    assert running == balance(storage, user_id)


def retried(call: Callable[..., Any], *args: Any) -> Any:
    """As a client retries a 503: contention that outlasted the adapter's own retries wrote nothing."""
    for _ in range(10):
        try:
            return call(*args)
        except StorageUnavailable:
            continue
    return call(*args)


def test_four_processes_spending_one_users_credits_never_overdraw_and_lose_no_update(
    firestore: FirestoreStorage,
) -> None:
    firestore.create_user("spender", 10, T0)
    stores = four_processes()

    def spend(store: FirestoreStorage, _: int) -> Counter[str]:
        outcome: Counter[str] = Counter()
        attempts = 4
        while attempts:
            try:
                store.debit_and_enqueue(new_generation("spender"))
                outcome["debited"] += 1
            except InsufficientCredits:
                outcome["refused"] += 1
            except (StorageUnavailable, TooManyRequests):  # contention outlasted the adapter's
                continue  # retries: nothing was written, and a client would retry the same way
            attempts -= 1
        return outcome

    outcome = sum(race(stores, spend), Counter())

    assert outcome == {"debited": 10, "refused": 6}
    assert balance(firestore, "spender") == 0
    assert_chain(firestore, "spender")
    assert list(service.verify(firestore)) == []
    for store in stores:
        store.close()


def test_four_processes_granting_and_refunding_one_user_keep_ledger_and_balance_in_step(
    firestore: FirestoreStorage,
) -> None:
    requests = [enqueue(firestore, created_at=T0 + MINUTE * n) for n in range(4)]
    stores = four_processes()

    def move(store: FirestoreStorage, n: int) -> bool:
        retried(store.move_credits, "testUser1", EntryType.GRANT, 1, "top-up", T0)
        return bool(retried(store.cancel_and_refund, requests[n].id, T0))

    assert all(race(stores, move))
    assert balance(firestore, "testUser1") == 104
    assert_chain(firestore, "testUser1")
    assert list(service.verify(firestore)) == []
    for store in stores:
        store.close()


def test_a_second_refund_for_a_request_cannot_be_written(firestore: FirestoreStorage) -> None:
    request = enqueue(firestore)
    assert firestore.cancel_and_refund(request.id, T0)
    refund = firestore.db.collection("users", "testUser1", "transactions").document(f"{request.id}_refund")

    with pytest.raises(gexc.AlreadyExists):
        refund.create({"type": "refund", "delta": 1})


# -- what the SQL adapter gets wrong today (its tests are strict xfails there) -----------------------------
def test_a_heartbeat_extends_only_the_request_and_worker_pairs_it_names(firestore: FirestoreStorage) -> None:
    enqueue(firestore, created_at=T0)
    enqueue(firestore, created_at=T0 + MINUTE)
    taken_over = claim(firestore, "w-b", T0)
    own = claim(firestore, "w-b", T0)

    assert firestore.extend_leases({taken_over.id: "w-a", own.id: "w-b"}, T0 + 10 * MINUTE) == 1
    assert [j.id for j in firestore.expired_jobs(T0 + 5 * MINUTE)] == [taken_over.id]


def test_an_import_that_would_overdraw_an_existing_user_is_refused_whole(firestore: FirestoreStorage) -> None:
    grant = {"collection": "transactions", "id": "fine", "userId": "newcomer", "type": "grant", "credits": 5}
    overdraft = {"collection": "transactions", "id": "over", "userId": "testUser2", "type": "adjustment"}
    lines = [
        json.dumps({**grant, "timestamp": "2026-11-16T09:00:00Z"}),
        json.dumps({**overdraft, "credits": -11, "timestamp": "2026-11-16T09:00:00Z"}),
    ]

    with pytest.raises(InvalidInput, match="testUser2"):
        import_lines(firestore, lines)

    assert balance(firestore, "testUser2") == 10
    assert firestore.get_user("newcomer") is None


# -- moving data between SQL and Firestore -------------------------------------------------------------------
def test_a_database_moved_from_sql_to_firestore_and_back_is_the_same(
    firestore_clean: str, tmp_path: Path
) -> None:
    source = sqlite(tmp_path, "source.db")
    service.first_start(source, T0)
    populate(source)
    target = FirestoreStorage(PROJECT)

    import_lines(target, export_lines(source))
    back = sqlite(tmp_path, "back.db")
    import_lines(back, export_lines(target))

    assert snapshot(target) == snapshot(source)
    assert snapshot(back) == snapshot(source)
    assert target.get_report("2026-W47") == source.get_report("2026-W47")
    assert list(service.verify(target)) == []
    assert list(service.verify(back)) == []


def test_an_import_of_many_batches_and_users_imports_whole(firestore_clean: str) -> None:
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

    counts = import_lines(target, lines)

    assert counts == {
        "users": 1,
        "usersCreatedAsReferenced": 450,
        "generationRequests": 900,
        "transactions": 0,
        "reports": 0,
    }
    assert balance(target, "bulk") == 3
    assert [e.reason for e in whole_ledger(target, "bulk")] == ["import: opening balance"]
    assert list(service.verify(target)) == []
    assert set(import_lines(target, lines).values()) == {0}


def test_an_import_interrupted_while_writing_completes_when_run_again(
    firestore_clean: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = sqlite(tmp_path, "source.db")
    service.first_start(source, T0)
    populate(source)
    lines = export_lines(source)
    target = FirestoreStorage(PROJECT)

    def outage(*_: Any) -> None:
        raise StorageUnavailable("Firestore unavailable: simulated")

    with monkeypatch.context() as patch:
        patch.setattr(firestore_transfer._Plan, "_create_users", outage)
        with pytest.raises(StorageUnavailable):
            import_lines(target, lines)
    assert target.get_user("alice") is None  # its entries are written, its document is not: invisible
    assert list(service.verify(target)) == []

    import_lines(target, lines)

    assert snapshot(target) == snapshot(source)
    assert list(service.verify(target)) == []


# -- the audit finds writes that went around the port -------------------------------------------------------
def test_the_audit_finds_a_balance_raised_a_refund_deleted_and_a_request_deleted(
    firestore: FirestoreStorage,
) -> None:
    failed = enqueue(firestore)
    claim(firestore, "w-1")
    assert firestore.fail_and_refund(failed.id, "model failed", T0, worker_id="w-1")
    done = enqueue(firestore, "testUser2")
    assert list(service.verify(firestore)) == []
    db = firestore.db

    db.collection("users").document("testUser2").update({"credits": 15})
    db.collection("users", "testUser1", "transactions").document(f"{failed.id}_refund").delete()
    db.collection("generationRequests").document(done.id).delete()

    found = {(v.invariant, v.subject) for v in service.verify(firestore)}
    assert found == {(1, "testUser2"), (1, "testUser1"), (3, failed.id), (2, f"{done.id}_deduction")}


# -- selection and failure ---------------------------------------------------------------------------
def test_a_firestore_url_opens_the_firestore_adapter(firestore_clean: str) -> None:
    storage = open_storage_adapter(f"firestore://{PROJECT}")
    assert isinstance(storage, FirestoreStorage) and storage.project == PROJECT
    storage.ping()
    with pytest.raises(InvalidInput):
        open_storage_adapter("firestore://")


def test_an_unreachable_firestore_is_storage_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    storage = FirestoreStorage(PROJECT)
    with pytest.raises(StorageUnavailable):
        storage.ping()


# -- port methods the contract suite does not cover yet: on every backend ------------------------------------
def test_an_idempotency_key_is_new_then_busy_then_replayed(storage: Storage) -> None:
    lock = T0 + MINUTE
    assert storage.begin_idempotent("testUser1", "k", "fp", T0, lock).state == "new"
    assert storage.begin_idempotent("testUser1", "k", "fp", T0, lock).state == "busy"
    with pytest.raises(IdempotencyConflict):
        storage.begin_idempotent("testUser1", "k", "other", T0, lock)
    response = StoredResponse(201, {"id": "x", "list": [[1, 2]]}, {"location": "/v1/x"})
    storage.finish_idempotent("testUser1", "k", response)

    replay = storage.begin_idempotent("testUser1", "k", "fp", T0 + 2 * MINUTE, lock)

    assert (replay.state, replay.response) == ("replay", response)
    assert storage.begin_idempotent("admin", "k", "fp", T0, lock).state == "new"  # another scope
    storage.release_idempotent("admin", "k")
    assert storage.begin_idempotent("admin", "k", "fp", T0, lock).state == "new"
    assert storage.purge_idempotency(T0 + MINUTE) == 2
    assert storage.begin_idempotent("testUser1", "k", "fp", T0, lock).state == "new"


def test_a_stale_in_progress_key_is_taken_over(storage: Storage) -> None:
    assert storage.begin_idempotent("u", "k", "fp", T0, T0 + MINUTE).state == "new"
    assert storage.begin_idempotent("u", "k", "fp", T0 + 2 * MINUTE, T0 + 3 * MINUTE).state == "new"


def test_webhook_deliveries_are_written_with_the_state_change_and_claimed_once(storage: Storage) -> None:
    events = frozenset({"start", "completed"})
    storage.debit_and_enqueue(
        replace(new_generation(), webhook="https://example.test/h", webhook_events=events)
    )
    job = claim(storage, "w-1", T0)
    assert storage.complete(job.id, "w-1", "/images/x.png", T0)

    claimed = storage.claim_webhooks(T0, T0 + MINUTE, limit=10)

    assert sorted(d.event for d in claimed) == ["completed", "start"]
    assert {d.payload["type"] for d in claimed} == {"generation.start", "generation.completed"}
    assert all(d.attempts == 1 and d.generation_request_id == job.id for d in claimed)
    assert storage.claim_webhooks(T0, T0 + MINUTE, limit=10) == []  # leased
    start = next(d for d in claimed if d.event == "start")
    storage.webhook_delivered(start.id, T0)
    completed = next(d for d in claimed if d.event == "completed")
    storage.webhook_failed(completed.id, "receiver answered 500", T0 + 2 * MINUTE)
    [retry] = storage.claim_webhooks(T0 + 3 * MINUTE, T0 + 4 * MINUTE, limit=10)
    assert (retry.id, retry.attempts) == (completed.id, 2)


def test_api_keys_are_found_by_hash_until_revoked(storage: Storage) -> None:
    storage.add_api_key("key-1", "hash-1", "testUser1", T0)
    found = storage.find_api_key("hash-1")
    assert found is not None and (found.id, found.user_id) == ("key-1", "testUser1")
    assert storage.revoke_api_key("key-1", T0)
    assert not storage.revoke_api_key("key-1", T0)
    assert storage.find_api_key("hash-1") is None


def test_meta_is_stored_once(storage: Storage) -> None:
    assert storage.get_meta("color") is None
    assert storage.put_meta_once("color", "blue") == "blue"
    assert storage.put_meta_once("color", "red") == "blue"
    assert storage.get_meta("color") == "blue"


def test_reports_list_newest_period_first_in_pages(storage: Storage) -> None:
    for week in ("2026-W45", "2026-W46", "2026-W47"):
        service.run_report(storage, reports.iso_week(week), T0)

    first = storage.list_reports(2, None)
    rest = storage.list_reports(2, first.next_cursor)

    assert [r["id"] for r in first.items] == ["2026-W47", "2026-W46"]
    assert [r["id"] for r in rest.items] == ["2026-W45"] and rest.next_cursor is None


def test_the_ledger_filters_by_type_and_time_and_pages(storage: Storage) -> None:
    storage.create_user("f", 0, T0)
    for n in range(6):
        storage.move_credits("f", EntryType.GRANT, 2, f"g{n}", T0 + MINUTE * n)
        storage.move_credits("f", EntryType.ADJUSTMENT, -1, f"a{n}", T0 + MINUTE * n)
    window = LedgerFilter(frozenset({EntryType.GRANT}), since=T0 + MINUTE, until=T0 + 5 * MINUTE)

    first = storage.ledger("f", 3, None, window)
    rest = storage.ledger("f", 3, first.next_cursor, window)

    assert [e.reason for e in first.items + rest.items] == ["g4", "g3", "g2", "g1"]
    assert rest.next_cursor is None
    assert storage.ledger_totals("f") == {EntryType.GRANT: 12, EntryType.ADJUSTMENT: -6}
    assert len(storage.ledger("f", 100, None, NO_FILTER).items) == 12


def test_requests_of_every_user_list_by_status(storage: Storage) -> None:
    enqueue(storage, created_at=T0)
    enqueue(storage, "testUser2", created_at=T0 + MINUTE)
    claim(storage, "w-1", T0)

    running = storage.list_requests(None, Status.RUNNING, 10, None)
    pending = storage.list_requests(None, Status.PENDING, 10, None)

    assert [r.user_id for r in running.items] == ["testUser1"]
    assert [r.user_id for r in pending.items] == ["testUser2"]
    assert storage.earliest_request_at() == T0


# -- the create path of the Cloud Functions: claimed at creation, priced under a configuration version ---
def limited(user_id: str, limit: int) -> NewGeneration:
    return replace(new_generation(user_id), max_in_flight=limit)


def assert_in_flight(storage: FirestoreStorage, user_id: str, count: int, limit: int = 3) -> None:
    """The user counts `count` requests in flight: exactly limit - count more may queue."""
    for _ in range(limit - count):
        storage.debit_and_enqueue(limited(user_id, limit))
    with pytest.raises(TooManyRequests):
        storage.debit_and_enqueue(limited(user_id, limit))


def test_a_request_claimed_at_its_creation_runs_under_its_creators_lease(firestore: FirestoreStorage) -> None:
    version = firestore.config_version()
    created, fresh = firestore.debit_and_claim(new_generation(), "instance-1", T0 + MINUTE, version)

    assert fresh and created.status is Status.RUNNING and created.attempts == 1
    assert firestore.claim_job("another", T0, T0 + MINUTE) is None  # nothing is left to claim
    assert firestore.expired_jobs(T0 + 2 * MINUTE) == [firestore.get_request(created.id)]
    assert firestore.complete(created.id, "instance-1", "/images/x.png", T0)
    assert not firestore.complete(created.id, "instance-1", "/images/x.png", T0)  # once
    assert balance(firestore, "testUser1") == 99
    assert_in_flight(firestore, "testUser1", 0)
    assert list(service.verify(firestore)) == []


def test_a_create_priced_under_an_older_configuration_is_refused_with_nothing_written(
    firestore: FirestoreStorage,
) -> None:
    versions = [firestore.config_version()]
    service.set_option(firestore, "sizes", "512x512", enabled=True, cost=2)
    versions.append(firestore.config_version())
    service.set_model(firestore, "model-a", latency_ms=10)
    versions.append(firestore.config_version())
    key_id, _ = service.issue_key(firestore, "testUser1", T0)
    assert firestore.config_version() == versions[-1]  # a new key needs no refresh: it is not cached
    firestore.revoke_api_key(key_id, T0)
    versions.append(firestore.config_version())

    with pytest.raises(StaleConfig):
        firestore.debit_and_claim(new_generation(), "instance-1", T0 + MINUTE, versions[0])

    assert len(set(versions)) == 4
    assert firestore.config_snapshot()[0] == versions[-1]
    assert firestore.config_snapshot()[1].cost_of("512x512") == 2
    assert balance(firestore, "testUser1") == 100
    assert firestore.list_requests("testUser1", None, 10, None).items == []


def test_one_idempotency_key_gives_one_request_whichever_instance_creates_it(
    firestore: FirestoreStorage,
) -> None:
    stores = four_processes()

    def create(store: FirestoreStorage, n: int) -> tuple[str, bool]:
        new = new_generation(key="once", fingerprint="same body")
        request, fresh = retried(store.debit_and_claim, new, f"instance-{n}", T0 + MINUTE, None)
        return request.id, fresh

    outcomes = race(stores, create)

    assert len({request_id for request_id, _ in outcomes}) == 1
    assert sum(fresh for _, fresh in outcomes) == 1
    assert balance(firestore, "testUser1") == 99
    with pytest.raises(IdempotencyConflict):
        firestore.debit_and_claim(new_generation(key="once", fingerprint="other body"), "i", T0, None)
    for store in stores:
        store.close()


def test_a_database_from_before_the_in_flight_counts_gets_them_from_its_requests(
    firestore: FirestoreStorage,
) -> None:
    keyed = enqueue(firestore, key="before", fingerprint="body")
    enqueue(firestore)
    done = claim(firestore, "w", T0)
    firestore.complete(done.id, "w", "/images/x.png", T0)
    db = firestore.db  # as schema 1 left it: no counters, no key documents
    db.collection("users").document("testUser1").update({"inFlight": firestore_module.DELETE_FIELD})
    for snap in db.collection("generationKeys").stream():
        snap.reference.delete()
    db.collection("meta").document("schema").set({"version": 1})

    firestore.migrate()

    assert_in_flight(firestore, "testUser1", 1)
    replayed, fresh = firestore.debit_and_enqueue(new_generation(key="before", fingerprint="body"))
    assert (replayed.id, fresh) == (keyed.id, False)
    assert list(service.verify(firestore)) == []


def test_imported_requests_still_in_flight_count_against_the_limit(
    firestore_clean: str, tmp_path: Path
) -> None:
    source = sqlite(tmp_path, "source.db")
    service.first_start(source, T0)
    populate(source)  # testUser1 has one pending request
    target = FirestoreStorage(PROJECT)

    import_lines(target, export_lines(source))

    assert_in_flight(target, "testUser1", 1)
    assert_in_flight(target, "alice", 0)
