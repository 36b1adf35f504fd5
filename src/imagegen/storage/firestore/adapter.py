"""The Firestore storage adapter, in the case study's collections (see docs.py for the documents).

Every credit move is a read-check-write inside a Firestore transaction (never a blind Increment), so
no interleaving of clients can overdraw a balance; a request's deduction and refund have the fixed
ids `{requestId}_deduction` and `{requestId}_refund` and are written with create(), so a second one
for the same request cannot exist whatever the retries. A request's status changes that move no
credits (claim, complete, requeue, heartbeat) are conditional writes: a batch whose precondition is
the update time of the document that was checked, so a concurrent change makes it fail, not win.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.generation import GenerationRequest, Status, to_resource, valid_id
from imagegen.domain.ledger import EntryType, LedgerEntry
from imagegen.domain.reports import GroupCount
from imagegen.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    TooManyRequests,
    UserExists,
    UserNotFound,
)
from imagegen.ids import random_id
from imagegen.ports import (
    NO_FILTER,
    ApiKey,
    Idempotency,
    LedgerFilter,
    NewGeneration,
    Page,
    StoredResponse,
    User,
    Violation,
    WebhookDelivery,
)
from imagegen.storage.firestore import audit, transfer
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import run_transaction, translate_errors, translated

log = logging.getLogger("imagegen.storage")
Transaction = firestore.Transaction
DESC = firestore.Query.DESCENDING
ASC = firestore.Query.ASCENDING
INITIAL_DATA_MARKER = "initial_data_loaded"
SCHEMA_VERSION = 1
CLAIM_CANDIDATES = 10  # a claim tries the oldest pending job first, then others at random
CLAIM_ROUNDS = 50
USER_LOCK_STRIPES = 64


def cond(field: str, op: str, value: Any) -> FieldFilter:
    return FieldFilter(field, op, value)


class FirestoreStorage:
    """`imagegen.ports.Storage` on Firestore (or its emulator, when FIRESTORE_EMULATOR_HOST is set)."""

    def __init__(self, project: str, database: str = "(default)") -> None:
        self.project = project
        self.database = database
        self.db = firestore.Client(project=project, database=database)
        # Credit moves of one user queue here rather than abort each other in Firestore: two
        # transactions on one document wait on each other's locks until one is aborted (the
        # emulator takes 2 s to decide). Other processes still contend, and are retried.
        self._user_locks = [threading.Lock() for _ in range(USER_LOCK_STRIPES)]

    @classmethod
    def from_url(cls, url: str) -> FirestoreStorage:
        """firestore://PROJECT or firestore://PROJECT/DATABASE."""
        rest = url.removeprefix("firestore://")
        project, _, database = rest.partition("/")
        if not project or "/" in database:
            raise InvalidInput(f"Invalid Firestore URL '{url}': use firestore://PROJECT[/DATABASE]")
        return cls(project, database or "(default)")

    def _user_lock(self, user_id: str) -> threading.Lock:
        return self._user_locks[zlib.crc32(user_id.encode()) % USER_LOCK_STRIPES]

    # -- collections ------------------------------------------------------------------------
    def _users(self) -> firestore.CollectionReference:
        return self.db.collection(d.USERS)

    def _ledger(self, user_id: str) -> firestore.CollectionReference:
        return self.db.collection(d.USERS, user_id, d.TRANSACTIONS)

    def _requests(self) -> firestore.CollectionReference:
        return self.db.collection(d.REQUESTS)

    def _meta(self, key: str) -> firestore.DocumentReference:
        return self.db.collection(d.META).document(key)

    # -- lifecycle --------------------------------------------------------------------------
    @translated
    def migrate(self) -> None:
        """Firestore has no schema to migrate; the version doc says which layout the data has."""
        ref = self._meta("schema")
        if not ref.get().exists:
            ref.set({"version": SCHEMA_VERSION})

    @translated
    def load_initial_data(
        self,
        catalog: Catalog,
        users: dict[str, int],
        keys: list[tuple[str, str, str | None]],
        now: datetime,
    ) -> bool:
        def load(tx: Transaction) -> bool:
            marker = self._meta(INITIAL_DATA_MARKER)
            if marker.get(transaction=tx).exists:
                return False
            existing = [self._users().document(u).get(transaction=tx).exists for u in users]
            for model in catalog.models.values():
                tx.set(self.db.collection(d.MODELS).document(model.name), _model_doc(model))
            for kind, names in (("styles", catalog.styles), ("colors", catalog.colors)):
                for name in sorted(names):
                    tx.set(self.db.collection(kind).document(name), {"enabled": True})
            for name, cost in catalog.sizes.items():
                tx.set(self.db.collection("sizes").document(name), {"cost": cost, "enabled": True})
            for (user_id, credits), exists in zip(users.items(), existing, strict=True):
                if not exists:
                    self._create_user(tx, user_id, credits, now, "initial data")
            for key_id, key_hash, key_user in keys:
                tx.create(self.db.collection(d.API_KEYS).document(key_id), _key_doc(key_hash, key_user, now))
            tx.create(marker, {"value": now.isoformat()})
            return True

        return run_transaction(self.db, load)

    @translated
    def ping(self) -> None:
        self._meta("schema").get(retry=None, timeout=5)

    def listen(
        self, on_job: Callable[[], None], on_done: Callable[[str], None], stop: threading.Event
    ) -> None:
        """Returns at once: Firestore processes poll (and Cloud Functions run their job inline)."""
        return

    def close(self) -> None:
        self.db.close()

    # -- catalog ----------------------------------------------------------------------------
    @translated
    def catalog(self) -> Catalog:
        models = {
            snap.id: _model(snap.id, snap.to_dict() or {}) for snap in self.db.collection(d.MODELS).stream()
        }
        enabled = {kind: self._enabled(kind) for kind in d.OPTION_KINDS}
        sizes = {snap_id: int(data["cost"]) for snap_id, data in enabled["sizes"]}
        return Catalog(
            models,
            frozenset(name for name, _ in enabled["styles"]),
            frozenset(name for name, _ in enabled["colors"]),
            sizes,
        )

    @translated
    def model_settings(self, name: str) -> ModelSettings | None:
        snap = self.db.collection(d.MODELS).document(name).get()
        return _model(name, snap.to_dict() or {}) if snap.exists else None

    def _enabled(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        found = ((snap.id, snap.to_dict() or {}) for snap in self.db.collection(kind).stream())
        return [(name, data) for name, data in found if data.get("enabled", True)]

    @translated
    def put_model(self, model: ModelSettings) -> None:
        self.db.collection(d.MODELS).document(model.name).set(_model_doc(model))

    @translated
    def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None:
        if kind not in d.OPTION_KINDS:
            raise InvalidInput(f"Unknown catalog kind '{kind}'")
        ref = self.db.collection(kind).document(name)
        values: dict[str, Any] = {"enabled": enabled}
        if cost is not None:
            values["cost"] = cost

        def put(tx: Transaction) -> None:
            if not ref.get(transaction=tx).exists and kind == "sizes" and cost is None:
                raise InvalidInput(f"A new size needs a cost: '{name}' is not in the catalog yet")
            tx.set(ref, values, merge=True)

        run_transaction(self.db, put)

    # -- users and credits ------------------------------------------------------------------
    def _create_user(self, tx: Transaction, user_id: str, credits: int, now: datetime, reason: str) -> None:
        tx.create(
            self._users().document(user_id),
            {"credits": credits, "createdAt": d.aware(now), "ledgerSeq": 1 if credits else 0},
        )
        if credits:
            entry = LedgerEntry(random_id(), user_id, EntryType.GRANT, credits, credits, None, reason, now)
            tx.create(self._ledger(user_id).document(entry.id), d.entry_doc(entry, 1))

    @translated
    def create_user(self, user_id: str, credits: int, now: datetime) -> User:
        def create(tx: Transaction) -> None:
            if self._users().document(user_id).get(transaction=tx).exists:
                raise UserExists(user_id)
            self._create_user(tx, user_id, credits, now, "opening balance")

        run_transaction(self.db, create)
        return User(user_id, credits, now)

    @translated
    def get_user(self, user_id: str) -> User | None:
        snap = self._users().document(user_id).get()
        if not snap.exists:
            return None
        data = snap.to_dict() or {}
        return User(snap.id, int(data["credits"]), d.required_utc(data["createdAt"]))

    @translated
    def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        def move(tx: Transaction) -> LedgerEntry:
            user = self._read_user(tx, user_id)
            if idempotency_key is not None:
                query = self._ledger(user_id).where(filter=cond("idempotencyKey", "==", idempotency_key))
                for snap in query.limit(1).stream(transaction=tx):
                    return _same_move(d.entry_from(snap.id, user_id, snap.to_dict() or {}), entry_type, delta)
            return self._append(tx, user, entry_type, delta, None, reason, now, random_id(), idempotency_key)

        with self._user_lock(user_id):
            return run_transaction(self.db, move)

    def _read_user(self, tx: Transaction, user_id: str) -> _UserState:
        snap = self._users().document(user_id).get(transaction=tx)
        if not snap.exists:
            raise UserNotFound(user_id)
        data = snap.to_dict() or {}
        return _UserState(user_id, int(data["credits"]), int(data.get("ledgerSeq") or 0))

    def _append(
        self,
        tx: Transaction,
        user: _UserState,
        entry_type: EntryType,
        delta: int,
        request_id: str | None,
        reason: str | None,
        now: datetime,
        entry_id: str,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        """Moves the balance (refusing to go below 0) and writes the entry; call after every read."""
        balance = user.credits + delta
        if balance < 0:
            raise InsufficientCredits("Insufficient credits", userId=user.id, required=-delta)
        seq = user.seq + 1
        tx.update(self._users().document(user.id), {"credits": balance, "ledgerSeq": seq})
        entry = LedgerEntry(entry_id, user.id, entry_type, delta, balance, request_id, reason, now)
        tx.create(self._ledger(user.id).document(entry_id), d.entry_doc(entry, seq, idempotency_key))
        return entry

    @translated
    def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]:
        query = self._ledger(user_id).order_by("seq", direction=DESC)
        if where.types:
            query = query.where(filter=cond("type", "in", sorted(e.value for e in where.types)))
        if cursor is not None:
            query = query.where(filter=cond("seq", "<", _int_cursor(cursor)))
        timed = where.since is not None or where.until is not None
        # A time window is filtered here: Firestore would have to order by the timestamp first.
        snaps = query.stream() if timed else query.limit(limit + 1).stream()
        found: list[tuple[int, LedgerEntry]] = []
        for snap in snaps:
            data = snap.to_dict() or {}
            entry = d.entry_from(snap.id, user_id, data)
            if where.since is not None and entry.timestamp < where.since:
                continue
            if where.until is not None and entry.timestamp >= where.until:
                continue
            found.append((int(data["seq"]), entry))
            if len(found) > limit:
                break
        next_cursor = str(found[limit - 1][0]) if len(found) > limit else None
        return Page([entry for _, entry in found[:limit]], next_cursor)

    @translated
    def ledger_totals(self, user_id: str) -> dict[EntryType, int]:
        totals: dict[EntryType, int] = defaultdict(int)
        for snap in self._ledger(user_id).select(["type", "delta"]).stream():
            data = snap.to_dict() or {}
            totals[EntryType(data["type"])] += int(data["delta"])
        return dict(totals)

    # -- generation requests and jobs -------------------------------------------------------
    @translated
    def debit_and_enqueue(self, new: NewGeneration) -> tuple[GenerationRequest, bool]:
        spec = new.spec
        requests = self._requests()

        def debit(tx: Transaction) -> tuple[GenerationRequest, bool]:
            if new.idempotency_key is not None:
                query = requests.where(filter=cond("userId", "==", spec.user_id)).where(
                    filter=cond("idempotencyKey", "==", new.idempotency_key)
                )
                for snap in query.limit(1).stream(transaction=tx):
                    data = snap.to_dict() or {}
                    if data.get("fingerprint") != new.fingerprint:
                        raise IdempotencyConflict(
                            "Idempotency-Key was already used with a different request body",
                            idempotencyKey=new.idempotency_key,
                        )
                    return d.request_from(snap.id, data), False
            user = self._read_user(tx, spec.user_id)
            if user.credits < new.cost:
                raise InsufficientCredits("Insufficient credits", userId=spec.user_id, required=new.cost)
            if new.max_in_flight is not None:
                self._check_in_flight(tx, spec.user_id, new.max_in_flight)
            doc = _new_request_doc(new)
            tx.create(requests.document(new.id), doc)
            self._append(
                tx,
                user,
                EntryType.DEDUCTION,
                -new.cost,
                new.id,
                None,
                new.created_at,
                d.entry_id(new.id, EntryType.DEDUCTION),
            )
            return d.request_from(new.id, doc), True

        with self._user_lock(spec.user_id):
            return run_transaction(self.db, debit)

    def _check_in_flight(self, tx: Transaction, user_id: str, limit: int) -> None:
        query = (
            self._requests()
            .where(filter=cond("userId", "==", user_id))
            .where(filter=cond("status", "in", [Status.PENDING.value, Status.RUNNING.value]))
        )
        counting: Any = query.count()
        results = counting.get(transaction=tx)
        in_flight = int(results[0][0].value)
        if in_flight >= limit:
            raise TooManyRequests(
                f"User {user_id} already has {in_flight} generations queued or running (limit {limit})",
                retry_after=1,
                userId=user_id,
                inFlight=in_flight,
                limit=limit,
            )

    @translated
    def get_request(self, request_id: str) -> GenerationRequest | None:
        if not valid_id(request_id):
            return None
        snap = self._requests().document(request_id).get()
        return d.request_from(snap.id, snap.to_dict() or {}) if snap.exists else None

    @translated
    def list_requests(
        self, user_id: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> Page[GenerationRequest]:
        query: Any = self._requests()
        if user_id is not None:
            query = query.where(filter=cond("userId", "==", user_id))
        if status is not None:
            query = query.where(filter=cond("status", "==", status.value))
        query = query.order_by("createdAt", direction=DESC).order_by("__name__", direction=DESC)
        if cursor is not None:
            at, last_id = _time_id_cursor(cursor)
            query = query.start_after({"createdAt": at, "__name__": last_id})
        found = [d.request_from(s.id, s.to_dict() or {}) for s in query.limit(limit + 1).stream()]
        next_cursor = None
        if len(found) > limit:
            last = found[limit - 1]
            next_cursor = f"{last.created_at.isoformat()}|{last.id}"
        return Page(found[:limit], next_cursor)

    @translated
    def claim_job(self, worker_id: str, now: datetime, lease_until: datetime) -> GenerationRequest | None:
        """Claims the oldest pending job, or another of the oldest few when a competitor took it.

        Every claimer reading the queue's head inside a transaction would make one lock convoy; instead
        each candidate is claimed by a write conditional on its update time, so of two claimers of
        the same job exactly one wins and the other moves on at once to another candidate.
        """
        pending = (
            self._requests()
            .where(filter=cond("status", "==", Status.PENDING.value))
            .order_by("createdAt")
            .order_by("__name__")
        )
        for _ in range(CLAIM_ROUNDS):
            candidates = list(pending.limit(CLAIM_CANDIDATES).stream())
            if not candidates:
                return None
            head, rest = candidates[0], candidates[1:]
            random.shuffle(rest)
            for snap in (head, *rest):
                claimed = self._try_claim(snap, worker_id, now, lease_until)
                if claimed is not None:
                    return claimed
        return None

    def _try_claim(
        self, snap: Any, worker_id: str, now: datetime, lease_until: datetime
    ) -> GenerationRequest | None:
        data = snap.to_dict() or {}
        if data.get("status") != Status.PENDING.value:
            return None
        changes = {
            "status": Status.RUNNING.value,
            "leaseOwner": worker_id,
            "leaseExpiresAt": d.aware(lease_until),
            "attempts": int(data.get("attempts") or 0) + 1,
            "startedAt": data.get("startedAt") or d.aware(now),
        }
        request = d.request_from(snap.id, {**data, **changes})
        batch = self.db.batch()
        batch.update(snap.reference, changes, option=self.db.write_option(last_update_time=snap.update_time))
        self._enqueue_webhook(batch, request, "start", now)
        try:
            batch.commit()
        except (gexc.FailedPrecondition, gexc.NotFound):
            return None  # changed since we read it: another worker claimed it, or it was canceled
        return request

    def _conditional_update(
        self, ref: firestore.DocumentReference, decide: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> GenerationRequest | None:
        """Applies decide(data)'s changes if the document has not changed since it was read.

        Returns the updated request, or None when the document is missing or decide refused.
        """
        while True:
            snap = ref.get()
            if not snap.exists:
                return None
            data = snap.to_dict() or {}
            changes = decide(data)
            if changes is None:
                return None
            try:
                ref.update(changes, option=self.db.write_option(last_update_time=snap.update_time))
            except gexc.FailedPrecondition:
                continue  # changed in between: decide again on what it is now
            return d.request_from(snap.id, {**data, **changes})

    @translated
    def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int:
        def extend(worker_id: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
            def decide(data: dict[str, Any]) -> dict[str, Any] | None:
                holds = data.get("status") == Status.RUNNING.value and data.get("leaseOwner") == worker_id
                return {"leaseExpiresAt": d.aware(lease_until)} if holds else None

            return decide

        extended = 0
        for request_id, worker_id in leases.items():
            ref = self._requests().document(request_id)
            extended += self._conditional_update(ref, extend(worker_id)) is not None
        return extended

    @translated
    def complete(self, request_id: str, worker_id: str, image_url: str, now: datetime) -> bool:
        ref = self._requests().document(request_id)

        def complete(tx: Transaction) -> bool:
            snap = ref.get(transaction=tx)
            data = snap.to_dict() or {}
            if not snap.exists or not _running_for(data, worker_id):
                return False
            changes = {
                "status": Status.COMPLETED.value,
                "imageUrl": image_url,
                "completedAt": d.aware(now),
                "leaseOwner": None,
                "leaseExpiresAt": None,
            }
            tx.update(ref, changes)
            self._enqueue_webhook(tx, d.request_from(request_id, {**data, **changes}), "completed", now)
            return True

        return run_transaction(self.db, complete)

    @translated
    def fail_and_refund(
        self,
        request_id: str,
        error: str,
        now: datetime,
        *,
        worker_id: str | None = None,
        lease_expired: bool = False,
    ) -> bool:
        def failing(data: dict[str, Any]) -> bool:
            if data.get("status") != Status.RUNNING.value:
                return False
            if worker_id is not None and data.get("leaseOwner") != worker_id:
                return False
            expires = d.utc(data.get("leaseExpiresAt"))
            return not lease_expired or (expires is not None and expires < now)

        return self._finish_with_refund(request_id, failing, Status.FAILED, error, now)

    @translated
    def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        def pending(data: dict[str, Any]) -> bool:
            return data.get("status") == Status.PENDING.value

        return self._finish_with_refund(request_id, pending, Status.CANCELED, "canceled", now)

    def _finish_with_refund(
        self,
        request_id: str,
        condition: Callable[[dict[str, Any]], bool],
        status: Status,
        error: str,
        now: datetime,
    ) -> bool:
        if not valid_id(request_id):
            return False
        ref = self._requests().document(request_id)
        found = ref.get()
        if not found.exists or not condition(found.to_dict() or {}):
            return False  # a quick no: the transaction below checks again

        def finish(tx: Transaction) -> bool:
            snap = ref.get(transaction=tx)
            data = snap.to_dict() or {}
            if not snap.exists or not condition(data):
                return False
            user = self._read_user(tx, data["userId"])
            changes = {
                "status": status.value,
                "error": error,
                "completedAt": d.aware(now),
                "leaseOwner": None,
                "leaseExpiresAt": None,
            }
            tx.update(ref, changes)
            cost = int(data["cost"])
            refund_id = d.entry_id(request_id, EntryType.REFUND)
            self._append(tx, user, EntryType.REFUND, cost, request_id, error, now, refund_id)
            self._enqueue_webhook(tx, d.request_from(request_id, {**data, **changes}), "completed", now)
            return True

        with self._user_lock(str((found.to_dict() or {})["userId"])):
            return run_transaction(self.db, finish)

    @translated
    def expired_jobs(self, now: datetime) -> list[GenerationRequest]:
        query = (
            self._requests()
            .where(filter=cond("status", "==", Status.RUNNING.value))
            .where(filter=cond("leaseExpiresAt", "<", d.aware(now)))
            .order_by("leaseExpiresAt")
            .limit(100)
        )
        return [d.request_from(snap.id, snap.to_dict() or {}) for snap in query.stream()]

    @translated
    def requeue(self, request_id: str, now: datetime) -> bool:
        def decide(data: dict[str, Any]) -> dict[str, Any] | None:
            expires = d.utc(data.get("leaseExpiresAt"))
            if data.get("status") != Status.RUNNING.value or expires is None or expires >= now:
                return None
            return {"status": Status.PENDING.value, "leaseOwner": None, "leaseExpiresAt": None}

        return self._conditional_update(self._requests().document(request_id), decide) is not None

    def _enqueue_webhook(self, writer: Any, request: GenerationRequest, event: str, now: datetime) -> None:
        """Adds the webhook outbox document to the same transaction or batch as the state change."""
        if not request.wants_webhook(event) or request.webhook is None:
            return
        writer.create(
            self.db.collection(d.WEBHOOKS).document("msg_" + random_id()),
            {
                "generationRequestId": request.id,
                "event": event,
                "url": request.webhook,
                "payload": {"type": f"generation.{event}", "data": to_resource(request)},
                "state": "pending",
                "attempts": 0,
                "nextAttemptAt": d.aware(now),
                "leaseExpiresAt": None,
                "lastError": None,
                "createdAt": d.aware(now),
                "deliveredAt": None,
            },
        )

    # -- api keys ---------------------------------------------------------------------------
    @translated
    def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
        self.db.collection(d.API_KEYS).document(key_id).create(_key_doc(key_hash, user_id, now))
        return ApiKey(key_id, user_id, now)

    @translated
    def find_api_key(self, key_hash: str) -> ApiKey | None:
        query = self.db.collection(d.API_KEYS).where(filter=cond("keyHash", "==", key_hash))
        for snap in query.limit(5).stream():
            data = snap.to_dict() or {}
            if data.get("revokedAt") is None:
                return ApiKey(snap.id, data.get("userId"), d.required_utc(data["createdAt"]))
        return None

    @translated
    def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        if not valid_id(key_id):
            return False
        ref = self.db.collection(d.API_KEYS).document(key_id)

        def revoke(tx: Transaction) -> bool:
            snap = ref.get(transaction=tx)
            if not snap.exists or (snap.to_dict() or {}).get("revokedAt") is not None:
                return False
            tx.update(ref, {"revokedAt": d.aware(now)})
            return True

        return run_transaction(self.db, revoke)

    # -- idempotency keys -------------------------------------------------------------------
    def _idempotency_ref(self, scope: str, key: str) -> firestore.DocumentReference:
        digest = hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()
        return self.db.collection(d.IDEMPOTENCY_KEYS).document(digest)

    @translated
    def begin_idempotent(
        self, scope: str, key: str, fingerprint: str, now: datetime, lock_until: datetime
    ) -> Idempotency:
        ref = self._idempotency_ref(scope, key)

        def begin(tx: Transaction) -> Idempotency:
            snap = ref.get(transaction=tx)
            if not snap.exists:
                tx.create(
                    ref,
                    {
                        "scope": scope,
                        "key": key,
                        "fingerprint": fingerprint,
                        "state": "in_progress",
                        "createdAt": d.aware(now),
                        "lockedUntil": d.aware(lock_until),
                    },
                )
                return Idempotency("new")
            data = snap.to_dict() or {}
            if data.get("fingerprint") != fingerprint:
                raise IdempotencyConflict(
                    "Idempotency-Key was already used with a different request", idempotencyKey=key
                )
            if data.get("state") == "done":
                body = json.loads(data["responseBody"]) if data.get("responseBody") is not None else None
                headers = dict(data.get("responseHeaders") or {})
                return Idempotency("replay", StoredResponse(int(data["responseStatus"]), body, headers))
            locked = d.utc(data.get("lockedUntil"))
            if locked is not None and locked > now:
                return Idempotency("busy")
            # The first attempt's process died mid-request: take over (the effect is deduplicated
            # where it is written, as in the SQL adapter).
            tx.update(ref, {"lockedUntil": d.aware(lock_until)})
            return Idempotency("new")

        return run_transaction(self.db, begin)

    @translated
    def finish_idempotent(self, scope: str, key: str, response: StoredResponse) -> None:
        ref = self._idempotency_ref(scope, key)
        changes = {
            "state": "done",
            "responseStatus": response.status,
            # JSON text: a response body may hold what a Firestore map cannot (nested arrays).
            "responseBody": None if response.body is None else json.dumps(response.body),
            "responseHeaders": dict(response.headers),
            "lockedUntil": None,
        }
        with contextlib.suppress(gexc.NotFound):
            ref.update(changes)

    @translated
    def release_idempotent(self, scope: str, key: str) -> None:
        ref = self._idempotency_ref(scope, key)

        def release(tx: Transaction) -> None:
            snap = ref.get(transaction=tx)
            if snap.exists and (snap.to_dict() or {}).get("state") == "in_progress":
                tx.delete(ref)

        run_transaction(self.db, release)

    @translated
    def purge_idempotency(self, created_before: datetime) -> int:
        query = self.db.collection(d.IDEMPOTENCY_KEYS).where(
            filter=cond("createdAt", "<", d.aware(created_before))
        )
        return self._delete_all(query)

    def _delete_all(self, query: Any) -> int:
        deleted = 0
        while True:
            refs = [snap.reference for snap in query.select([]).limit(400).stream()]
            if not refs:
                return deleted
            batch = self.db.batch()
            for ref in refs:
                batch.delete(ref)
            batch.commit()
            deleted += len(refs)

    # -- webhooks ---------------------------------------------------------------------------
    @translated
    def claim_webhooks(self, now: datetime, lease_until: datetime, limit: int) -> list[WebhookDelivery]:
        query = (
            self.db.collection(d.WEBHOOKS)
            .where(filter=cond("state", "==", "pending"))
            .where(filter=cond("nextAttemptAt", "<=", d.aware(now)))
            .order_by("nextAttemptAt")
            .limit(limit * 3 + 10)
        )

        def claim(tx: Transaction) -> list[WebhookDelivery]:
            claimed = []
            for snap in query.stream(transaction=tx):
                data = snap.to_dict() or {}
                lease = d.utc(data.get("leaseExpiresAt"))
                if lease is not None and lease >= now:
                    continue  # another dispatcher is delivering it
                attempts = int(data.get("attempts") or 0) + 1
                claimed.append((snap.reference, _delivery(snap.id, data, attempts)))
                if len(claimed) == limit:
                    break
            for ref, delivery in claimed:
                tx.update(ref, {"leaseExpiresAt": d.aware(lease_until), "attempts": delivery.attempts})
            return [delivery for _, delivery in claimed]

        return run_transaction(self.db, claim)

    @translated
    def webhook_delivered(self, delivery_id: str, now: datetime) -> None:
        changes = {
            "state": "delivered",
            "deliveredAt": d.aware(now),
            "leaseExpiresAt": None,
            "lastError": None,
        }
        self._update_if_exists(self.db.collection(d.WEBHOOKS).document(delivery_id), changes)

    @translated
    def webhook_failed(self, delivery_id: str, error: str, retry_at: datetime | None) -> None:
        changes: dict[str, Any] = {"lastError": error[:1000], "leaseExpiresAt": None}
        if retry_at is None:
            changes["state"] = "abandoned"
        else:
            changes["nextAttemptAt"] = d.aware(retry_at)
        self._update_if_exists(self.db.collection(d.WEBHOOKS).document(delivery_id), changes)

    def _update_if_exists(self, ref: firestore.DocumentReference, changes: dict[str, Any]) -> None:
        with contextlib.suppress(gexc.NotFound):
            ref.update(changes)

    @translated
    def get_meta(self, key: str) -> str | None:
        snap = self._meta(key).get()
        return str((snap.to_dict() or {})["value"]) if snap.exists else None

    @translated
    def put_meta_once(self, key: str, value: str) -> str:
        ref = self._meta(key)

        def put(tx: Transaction) -> str:
            snap = ref.get(transaction=tx)
            if snap.exists:
                return str((snap.to_dict() or {})["value"])
            tx.create(ref, {"value": value})
            return value

        return run_transaction(self.db, put)

    # -- reports ----------------------------------------------------------------------------
    def _period(self, start: datetime, end: datetime) -> Any:
        return (
            self._requests()
            .where(filter=cond("createdAt", ">=", d.aware(start)))
            .where(filter=cond("createdAt", "<", d.aware(end)))
        )

    @translated
    def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]:
        """Firestore has no GROUP BY: streams the period's requests (six fields each) and counts here.

        Costs one document read per request in the period.
        """
        groups: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
        fields = ["model", "style", "color", "size", "status", "cost"]
        for snap in self._period(start, end).select(fields).stream():
            data = snap.to_dict() or {}
            group = groups[tuple(str(data[f]) for f in fields[:5])]
            group[0] += 1
            group[1] += int(data.get("cost") or 0)
        return [
            GroupCount(model, style, color, size, status, count, cost)
            for (model, style, color, size, status), (count, cost) in groups.items()
        ]

    @translated
    def unique_users(self, start: datetime, end: datetime) -> int:
        users = {
            (snap.to_dict() or {}).get("userId")
            for snap in self._period(start, end).select(["userId"]).stream()
        }
        return len(users)

    @translated
    def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None:
        start = datetime.fromisoformat(document["periodStart"])
        end = datetime.fromisoformat(document["periodEnd"])
        self.db.collection(d.REPORTS).document(report_id).set(d.report_doc(document, start, end, now))

    @translated
    def get_report(self, report_id: str) -> dict[str, Any] | None:
        if not valid_id(report_id):
            return None
        snap = self.db.collection(d.REPORTS).document(report_id).get()
        return d.report_from(snap.to_dict() or {}) if snap.exists else None

    @translated
    def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
        """Newest period first; the cursor is the last report's period start and id."""
        order = f"{d.REPORT_META}.periodStart"
        query = (
            self.db.collection(d.REPORTS).order_by(order, direction=DESC).order_by("__name__", direction=DESC)
        )
        if cursor is not None:
            at, last_id = _time_id_cursor(cursor)
            query = query.start_after({order: at, "__name__": last_id})
        snaps = list(query.limit(limit + 1).stream())
        next_cursor = None
        if len(snaps) > limit:
            last = snaps[limit - 1]
            started = d.required_utc((last.to_dict() or {})[d.REPORT_META]["periodStart"])
            next_cursor = f"{started.isoformat()}|{last.id}"
        return Page([d.report_from(snap.to_dict() or {}) for snap in snaps[:limit]], next_cursor)

    @translated
    def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        query = self._period(start, end).where(filter=cond("status", "==", Status.COMPLETED.value))
        counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for snap in query.select(["model", "startedAt", "completedAt"]).stream():
            data = snap.to_dict() or {}
            started, completed = d.utc(data.get("startedAt")), d.utc(data.get("completedAt"))
            if started is None or completed is None:
                continue
            millis = (completed - started).total_seconds() * 1000
            counts[data["model"]][max(int(millis // bucket_ms), 0)] += 1
        return {model: sorted(buckets.items()) for model, buckets in counts.items()}

    @translated
    def earliest_request_at(self) -> datetime | None:
        query = self._requests().order_by("createdAt").select(["createdAt"]).limit(1)
        for snap in query.stream():
            return d.utc((snap.to_dict() or {}).get("createdAt"))
        return None

    # -- scheduler --------------------------------------------------------------------------
    @translated
    def claim_scheduled_run(self, period_id: str, owner: str, now: datetime, stale_before: datetime) -> bool:
        ref = self.db.collection(d.SCHEDULED_RUNS).document(period_id)

        def claim(tx: Transaction) -> bool:
            snap = ref.get(transaction=tx)
            claim = {"periodId": period_id, "claimedBy": owner, "claimedAt": d.aware(now), "finished": False}
            if not snap.exists:
                tx.create(ref, {**claim, "finishedAt": None})
                return True
            data = snap.to_dict() or {}
            claimed_at = d.utc(data.get("claimedAt"))
            if data.get("finished") or (claimed_at is not None and claimed_at >= stale_before):
                return False
            tx.update(ref, claim)  # the process that claimed it died before finishing: take over
            return True

        return run_transaction(self.db, claim)

    @translated
    def finish_scheduled_run(self, period_id: str, now: datetime) -> None:
        ref = self.db.collection(d.SCHEDULED_RUNS).document(period_id)
        self._update_if_exists(ref, {"finished": True, "finishedAt": d.aware(now)})

    @translated
    def last_scheduled_run(self) -> str | None:
        query = (
            self.db.collection(d.SCHEDULED_RUNS)
            .where(filter=cond("finished", "==", True))
            .order_by("periodId", direction=DESC)
            .limit(1)
        )
        for snap in query.stream():
            return str((snap.to_dict() or {})["periodId"])
        return None

    # -- audit, import, export --------------------------------------------------------------
    def violations(self) -> Iterator[Violation]:
        with translate_errors():
            yield from audit.violations(self.db)

    def export_records(self) -> Iterator[dict[str, Any]]:
        with translate_errors():
            yield from transfer.export_records(self.db)

    @translated
    def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
        return transfer.import_records(self.db, records, now)


class _UserState:
    """A user's balance and ledger counter as read inside a transaction."""

    __slots__ = ("id", "credits", "seq")

    def __init__(self, user_id: str, credits: int, seq: int) -> None:
        self.id = user_id
        self.credits = credits
        self.seq = seq


def _same_move(existing: LedgerEntry, entry_type: EntryType, delta: int) -> LedgerEntry:
    if (existing.type, existing.delta) != (entry_type, delta):
        raise IdempotencyConflict("Idempotency-Key was already used for a different credit move")
    return existing


def _running_for(data: dict[str, Any], worker_id: str) -> bool:
    return data.get("status") == Status.RUNNING.value and data.get("leaseOwner") == worker_id


def _model(name: str, data: dict[str, Any]) -> ModelSettings:
    return ModelSettings(
        name,
        float(data.get("failureRate", 0.05)),
        int(data.get("latencyMs", 300)),
        bool(data.get("enabled", True)),
    )


def _model_doc(model: ModelSettings) -> dict[str, Any]:
    return {"failureRate": model.failure_rate, "latencyMs": model.latency_ms, "enabled": model.enabled}


def _key_doc(key_hash: str, user_id: str | None, now: datetime) -> dict[str, Any]:
    return {"keyHash": key_hash, "userId": user_id, "createdAt": d.aware(now), "revokedAt": None}


def _new_request_doc(new: NewGeneration) -> dict[str, Any]:
    spec = new.spec
    return {
        "userId": spec.user_id,
        "model": spec.model,
        "style": spec.style,
        "color": spec.color,
        "size": spec.size,
        "prompt": spec.prompt,
        "cost": new.cost,
        "status": Status.PENDING.value,
        "imageUrl": None,
        "error": None,
        "attempts": 0,
        "createdAt": d.aware(new.created_at),
        "startedAt": None,
        "completedAt": None,
        "leaseOwner": None,
        "leaseExpiresAt": None,
        "idempotencyKey": new.idempotency_key,
        "fingerprint": new.fingerprint,
        "source": "api",
        "webhook": new.webhook,
        "webhookEvents": sorted(new.webhook_events),
    }


def _delivery(delivery_id: str, data: dict[str, Any], attempts: int) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id,
        data["generationRequestId"],
        data["event"],
        data["url"],
        dict(data["payload"]),
        attempts,
        d.required_utc(data["createdAt"]),
    )


def _int_cursor(cursor: str) -> int:
    try:
        return int(cursor)
    except ValueError as exc:
        raise InvalidInput(f"Invalid cursor '{cursor}'") from exc


def _time_id_cursor(cursor: str) -> tuple[datetime, str]:
    at_text, _, last_id = cursor.partition("|")
    try:
        at = datetime.fromisoformat(at_text)
    except ValueError as exc:
        raise InvalidInput(f"Invalid cursor '{cursor}'") from exc
    if at.tzinfo is None or not valid_id(last_id):
        raise InvalidInput(f"Invalid cursor '{cursor}'")
    return at, last_id
