"""Export and import of models, users, requests, ledger entries and reports on Firestore.

Records are the service layer's normalized dicts, as for the SQL adapter (storage/sql/transfer.py),
with the same rules: idempotent by id, referenced-but-missing users created with 0 credits, users
created by the import end with the balance their `users` line gives (one "import: opening balance"
adjustment where their ledger does not add up to it), imported entries of existing users move their
balance, and an import that would take an existing balance below 0 is refused.

What differs is atomicity. One Firestore commit holds a few hundred writes, so a large file cannot
be one transaction. The guarantee instead:

1. Nothing is written until the whole file has been read, validated and planned: a bad line (the
   parser raises at it), a document Firestore cannot store, or an overdraft of an existing user
   refuses the import with nothing written. The plan is staged in a temporary SQLite file, so memory
   stays flat whatever the file's size.
2. Then the writes go in batches. Models (a models line replaces the stored model, with a new
   configuration version in the same batch) are written first, then requests and reports are
   created; each existing user's new entries are written together with the move of that user's
   balance, in transactions of at most 400 entries (balance = ledger at every instant); each new
   user's document, with its final balance and any opening adjustment, is created in one atomic
   batch after all its entries.
3. If writing stops midway (a crash, Firestore unavailable), what was written is consistent for
   every user whose document exists, and running the same import again completes it, skipping
   what is already there. A user created concurrently by the API while the import was writing is a
   Conflict, reported, and nothing of that user is overwritten.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from imagegen.domain.catalog import model_from_record, model_record
from imagegen.domain.errors import Conflict, InvalidInput
from imagegen.domain.generation import Status
from imagegen.domain.ids import random_id
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.catalog import model_doc, model_from
from imagegen.storage.firestore.errors import run_transaction
from imagegen.storage.firestore.parts import CONFIG_VERSION

COLLECTIONS = ("users", "generationRequests", "transactions", "reports", "models")
PAGE = 1000  # documents per export page
LOOKUP = 300  # documents per existence check (one get_all)
WRITES = 400  # documents per batch or transaction
MAX_DOCUMENT_BYTES = 900_000  # Firestore's limit is 1 MiB including field names and overhead
IN_FLIGHT = (Status.PENDING.value, Status.RUNNING.value)

REQUEST_FIELDS = {
    "user_id": "userId",
    "model": "model",
    "style": "style",
    "color": "color",
    "size": "size",
    "prompt": "prompt",
    "cost": "cost",
    "status": "status",
    "image_url": "imageUrl",
    "error": "error",
    "created_at": "createdAt",
    "started_at": "startedAt",
    "completed_at": "completedAt",
}


# -- export ---------------------------------------------------------------------------------------
def export_records(db: firestore.Client) -> Iterator[dict[str, Any]]:
    for snap in db.collection(d.MODELS).order_by("__name__").stream():  # the catalog's few models
        yield model_record(model_from(snap.id, snap.to_dict() or {}))
    users = db.collection(d.USERS).order_by("__name__")
    for snap in _paged(users):
        data = snap.to_dict() or {}
        yield {
            "collection": "users",
            "id": snap.id,
            "credits": int(data["credits"]),
            "created_at": d.utc(data.get("createdAt")),
        }
    requests = db.collection(d.REQUESTS).order_by("createdAt").order_by("__name__")
    for snap in _paged(requests):
        data = snap.to_dict() or {}
        record: dict[str, Any] = {"collection": "generationRequests", "id": snap.id}
        for name, field in REQUEST_FIELDS.items():
            value = data.get(field)
            record[name] = d.utc(value) if name.endswith("_at") else value
        record["prompt"] = record["prompt"] or ""
        yield record
    for user in _paged(db.collection(d.USERS).order_by("__name__").select([])):
        for snap in _paged(user.reference.collection(d.TRANSACTIONS).order_by("seq")):
            entry = d.entry_from(snap.id, user.id, snap.to_dict() or {})
            yield {
                "collection": "transactions",
                "id": entry.id,
                "user_id": entry.user_id,
                "type": entry.type.value,
                "delta": entry.delta,
                "balance_after": entry.balance_after,
                "generation_request_id": entry.generation_request_id,
                "reason": entry.reason,
                "created_at": entry.timestamp,
            }
    reports = db.collection(d.REPORTS).order_by(f"{d.REPORT_META}.periodStart").order_by("__name__")
    for snap in _paged(reports):
        yield {"collection": "reports", "id": snap.id, "document": d.report_from(snap.to_dict() or {})}


def _paged(query: Any) -> Iterator[Any]:
    """Streams a query in pages, so that no single stream runs long enough to time out."""
    last = None
    while True:
        page = query.start_after(last) if last is not None else query
        snaps = list(page.limit(PAGE).stream())
        yield from snaps
        if len(snaps) < PAGE:
            return
        last = snaps[-1]


# -- import ---------------------------------------------------------------------------------------
def import_records(db: firestore.Client, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="imagegen-import-") as folder:
        plan = _Plan(db, Path(folder) / "plan.db", now)
        try:
            plan.read(records)
            plan.look_up()
            plan.check()
            return plan.write()
        finally:
            plan.close()


STAGING = """
CREATE TABLE records (
    ord INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    delta INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    present INTEGER NOT NULL DEFAULT 0,
    UNIQUE (collection, user_id, id)
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    line INTEGER NOT NULL DEFAULT 0,
    target INTEGER NOT NULL DEFAULT 0,
    created_at BLOB,
    present INTEGER NOT NULL DEFAULT 0,
    credits INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0
);
"""


class _Plan:
    def __init__(self, db: firestore.Client, path: Path, now: datetime) -> None:
        self.db = db
        self.now = now
        self.stage = sqlite3.connect(path)
        self.stage.executescript(STAGING)
        self.counts = {name: 0 for name in COLLECTIONS}
        self.models: dict[str, dict[str, Any]] = {}  # the last line of each name wins
        self.counts["usersCreatedAsReferenced"] = 0
        self.in_flight: Counter[str] = Counter()

    def close(self) -> None:
        self.stage.close()

    # 1. read and validate everything; the first occurrence of an id wins, as in the SQL adapter
    def read(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            collection = record["collection"]
            if collection == "users":
                self._user_line(record)
            elif collection == "generationRequests":
                _check_size(record, f"request '{record['id']}'")
                self._stage(record, record["user_id"], user_key="")
            elif collection == "transactions":
                self._stage(record, record["user_id"], user_key=record["user_id"], delta=record["delta"])
            elif collection == "reports":
                _check_storable(record["document"], f"report '{record['id']}'")
                _check_size(record["document"], f"report '{record['id']}'")
                self._stage(record, None, user_key="")
            elif collection == "models":
                _check_storable(record["deployments"], f"model '{record['id']}'")
                _check_size(record, f"model '{record['id']}'")
                self.models[record["id"]] = record
            else:
                raise InvalidInput(f"import refused: unknown collection '{collection}'")

    def _user_line(self, record: dict[str, Any]) -> None:
        self.stage.execute(
            "INSERT INTO users (id, line, target, created_at) VALUES (?, 1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET line = 1, target = excluded.target, "
            "created_at = coalesce(users.created_at, excluded.created_at)",
            (record["id"], record["credits"], pickle.dumps(record.get("created_at"))),
        )

    def _stage(self, record: dict[str, Any], user_id: str | None, *, user_key: str, delta: int = 0) -> None:
        self.stage.execute(
            "INSERT OR IGNORE INTO records (collection, id, user_id, delta, payload) VALUES (?, ?, ?, ?, ?)",
            (record["collection"], record["id"], user_key, delta, pickle.dumps(record)),
        )
        if user_id is not None:
            self.stage.execute("INSERT OR IGNORE INTO users (id) VALUES (?)", (user_id,))

    # 2. which documents exist already (skipped), and the existing users' balances
    def look_up(self) -> None:
        self._look_up_records(
            "generationRequests", lambda uid, rid: self.db.collection(d.REQUESTS).document(rid)
        )
        self._look_up_records("reports", lambda uid, rid: self.db.collection(d.REPORTS).document(rid))
        self._look_up_records(
            "transactions", lambda uid, rid: self.db.collection(d.USERS, uid, d.TRANSACTIONS).document(rid)
        )
        ids = [row[0] for row in self.stage.execute("SELECT id FROM users ORDER BY id")]
        for chunk in _chunks(ids, LOOKUP):
            refs = [self.db.collection(d.USERS).document(user_id) for user_id in chunk]
            for snap in self.db.get_all(refs):
                if snap.exists:
                    data = snap.to_dict() or {}
                    self.stage.execute(
                        "UPDATE users SET present = 1, credits = ?, seq = ? WHERE id = ?",
                        (int(data["credits"]), int(data.get("ledgerSeq") or 0), snap.id),
                    )

    def _look_up_records(self, collection: str, ref: Any) -> None:
        rows = self.stage.execute(
            "SELECT ord, user_id, id FROM records WHERE collection = ? ORDER BY ord", (collection,)
        ).fetchall()
        for chunk in _chunks(rows, LOOKUP):
            by_path = {ref(user_id, rid).path: ord_ for ord_, user_id, rid in chunk}
            present = [
                (snap.reference.path, snap) for snap in self.db.get_all([ref(u, r) for _, u, r in chunk])
            ]
            for path in (p for p, snap in present if snap.exists):
                if path in by_path:
                    self.stage.execute("UPDATE records SET present = 1 WHERE ord = ?", (by_path[path],))

    # 3. an overdraft of an existing user refuses the whole import, before any write
    def check(self) -> None:
        for user_id, credits, _ in self._existing_users():
            balance = credits
            for chunk in _chunks(list(self._new_entries(user_id)), WRITES):
                balance += sum(entry["delta"] for entry in chunk)
                if balance < 0:
                    raise InvalidInput(f"import refused: it would take user {user_id} to {balance} credits")

    def _existing_users(self) -> list[tuple[str, int, int]]:
        query = "SELECT id, credits, seq FROM users WHERE present = 1 ORDER BY id"
        return list(self.stage.execute(query))

    def _new_users(self) -> list[tuple[str, int, int, Any]]:
        query = "SELECT id, line, target, created_at FROM users WHERE present = 0 ORDER BY id"
        return list(self.stage.execute(query))

    def _new_entries(self, user_id: str) -> Iterator[dict[str, Any]]:
        query = (
            "SELECT payload FROM records WHERE collection = 'transactions' AND user_id = ? AND present = 0 "
            "ORDER BY ord"
        )
        for (payload,) in self.stage.execute(query, (user_id,)):
            yield pickle.loads(payload)

    def _new(self, collection: str) -> Iterator[dict[str, Any]]:
        query = "SELECT payload FROM records WHERE collection = ? AND present = 0 ORDER BY ord"
        for (payload,) in self.stage.execute(query, (collection,)):
            yield pickle.loads(payload)

    # 4. write
    def write(self) -> dict[str, int]:
        self._write_models()
        requests = list(self._new("generationRequests"))
        # Users count their requests queued or running (the in-flight limit): imported ones too.
        self.in_flight = Counter(r["user_id"] for r in requests if r["status"] in IN_FLIGHT)
        for chunk in _chunks(requests, WRITES):
            self._create_all(
                (self.db.collection(d.REQUESTS).document(r["id"]), _request_doc(r)) for r in chunk
            )
            self.counts["generationRequests"] += len(chunk)
        for chunk in _chunks(list(self._new("reports")), WRITES):
            self._create_all(
                (self.db.collection(d.REPORTS).document(r["id"]), self._report_doc(r)) for r in chunk
            )
            self.counts["reports"] += len(chunk)
        for user_id, _, _ in self._existing_users():
            for chunk in _chunks(list(self._new_entries(user_id)), WRITES):
                run_transaction(self.db, self._append_to_existing, user_id, chunk)
                self.counts["transactions"] += len(chunk)
            if self.in_flight[user_id]:
                user_ref = self.db.collection(d.USERS).document(user_id)
                user_ref.update({"inFlight": firestore.Increment(self.in_flight[user_id])})
        self._write_new_users()
        return self.counts

    def _write_models(self) -> None:
        """A models line replaces the stored model, with a new configuration version, in one batch."""
        changed = []
        for chunk in _chunks(list(self.models.values()), LOOKUP):
            refs = [self.db.collection(d.MODELS).document(r["id"]) for r in chunk]
            stored = {snap.id: snap for snap in self.db.get_all(refs)}
            for record in chunk:
                model = model_from_record(record)
                snap = stored.get(model.name)
                if snap is None or not snap.exists or model_from(snap.id, snap.to_dict() or {}) != model:
                    changed.append(model)
        for chunk in _chunks(changed, WRITES - 1):
            batch = self.db.batch()
            for model in chunk:
                batch.set(self.db.collection(d.MODELS).document(model.name), model_doc(model))
            batch.set(self.db.collection(d.META).document(CONFIG_VERSION), {"value": random_id()})
            batch.commit()
        self.counts["models"] = len(changed)

    def _create_all(self, writes: Iterable[tuple[firestore.DocumentReference, dict[str, Any]]]) -> None:
        batch = self.db.batch()
        for ref, data in writes:
            batch.create(ref, data)
        batch.commit()

    def _report_doc(self, record: dict[str, Any]) -> dict[str, Any]:
        saved = record.get("generated_at") or self.now
        return d.report_doc(record["document"], record["period_start"], record["period_end"], saved)

    def _append_to_existing(
        self, tx: firestore.Transaction, user_id: str, chunk: list[dict[str, Any]]
    ) -> None:
        user_ref = self.db.collection(d.USERS).document(user_id)
        snap = user_ref.get(transaction=tx)
        data = snap.to_dict() or {}
        credits, seq = int(data["credits"]), int(data.get("ledgerSeq") or 0)
        for record in chunk:
            seq += 1
            credits += record["delta"]
            tx.create(user_ref.collection(d.TRANSACTIONS).document(record["id"]), _entry_doc(record, seq))
        if credits < 0:  # the balance moved since the plan was checked
            raise InvalidInput(f"import stopped: it would take user {user_id} to {credits} credits")
        tx.update(user_ref, {"credits": credits, "ledgerSeq": seq})

    def _write_new_users(self) -> None:
        pending: list[tuple[firestore.DocumentReference, dict[str, Any]]] = []
        for user_id, line, target, created_at in self._new_users():
            ledger_sum, seq = self._write_entries_of_new_user(user_id)
            when = (pickle.loads(created_at) if created_at else None) or self.now
            user_ref = self.db.collection(d.USERS).document(user_id)
            if ledger_sum != target:
                seq += 1
                adjustment = LedgerEntry(
                    random_id(),
                    user_id,
                    EntryType.ADJUSTMENT,
                    target - ledger_sum,
                    target,
                    None,
                    "import: opening balance",
                    self.now,
                )
                pending.append(
                    (
                        user_ref.collection(d.TRANSACTIONS).document(adjustment.id),
                        d.entry_doc(adjustment, seq),
                    )
                )
            # Created last, with its final balance: the user appears whole or not at all.
            user_doc = {"credits": target, "createdAt": d.aware(when), "ledgerSeq": seq}
            pending.append((user_ref, {**user_doc, "inFlight": self.in_flight[user_id]}))
            self.counts["users" if line else "usersCreatedAsReferenced"] += 1
            if len(pending) >= WRITES - 1:
                self._create_users(pending)
                pending = []
        if pending:
            self._create_users(pending)

    def _create_users(self, writes: list[tuple[firestore.DocumentReference, dict[str, Any]]]) -> None:
        try:
            self._create_all(writes)
        except gexc.AlreadyExists as exc:
            raise Conflict("import stopped: a user it creates was created meanwhile; run it again") from exc

    def _write_entries_of_new_user(self, user_id: str) -> tuple[int, int]:
        """Writes a new user's entries (before the user document); returns (ledger sum, last seq)."""
        ledger = self.db.collection(d.USERS, user_id, d.TRANSACTIONS)
        ledger_sum, seq = 0, 0
        # Entries left by an earlier, interrupted run of this import count too.
        leftover = "SELECT 1 FROM records WHERE collection = 'transactions' AND user_id = ? AND present = 1"
        if self.stage.execute(leftover, (user_id,)).fetchone():
            for snap in ledger.select(["delta", "seq"]).stream():
                data = snap.to_dict() or {}
                ledger_sum += int(data["delta"])
                seq = max(seq, int(data.get("seq") or 0))
        for chunk in _chunks(list(self._new_entries(user_id)), WRITES):
            writes = []
            for record in chunk:
                seq += 1
                ledger_sum += record["delta"]
                writes.append((ledger.document(record["id"]), _entry_doc(record, seq)))
            self._create_all(writes)
            self.counts["transactions"] += len(chunk)
        return ledger_sum, seq


def _request_doc(record: dict[str, Any]) -> dict[str, Any]:
    doc = {field: record.get(name) for name, field in REQUEST_FIELDS.items()}
    for name, field in REQUEST_FIELDS.items():
        value = doc[field]
        if name.endswith("_at") and isinstance(value, datetime):
            doc[field] = d.aware(value)
    return {
        **doc,
        "prompt": doc["prompt"] or "",
        "attempts": 0,
        "leaseOwner": None,
        "leaseExpiresAt": None,
        "idempotencyKey": None,
        "fingerprint": None,
        "source": "import",
        "webhook": None,
        "webhookEvents": [],
    }


def _entry_doc(record: dict[str, Any], seq: int) -> dict[str, Any]:
    entry = LedgerEntry(
        record["id"],
        record["user_id"],
        EntryType(record["type"]),
        record["delta"],
        record.get("balance_after"),
        record.get("generation_request_id"),
        record.get("reason"),
        record["created_at"],
    )
    return d.entry_doc(entry, seq)


def _check_size(record: dict[str, Any], what: str) -> None:
    if len(json.dumps(record, default=str)) > MAX_DOCUMENT_BYTES:
        raise InvalidInput(f"import refused: {what} is larger than a Firestore document can be")


def _check_storable(value: Any, what: str, inside_array: bool = False) -> None:
    """Firestore stores JSON except arrays directly inside arrays, and documents up to 1 MiB."""
    if isinstance(value, list):
        if inside_array:
            raise InvalidInput(f"import refused: {what} holds an array inside an array (Firestore cannot)")
        for item in value:
            _check_storable(item, what, inside_array=True)
    elif isinstance(value, dict):
        for item in value.values():
            _check_storable(item, what)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
