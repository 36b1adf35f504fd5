"""The Firestore storage adapter, in the case study's collections (see docs.py for the documents).

Every credit move is a read-check-write (never a blind Increment of a balance), so no interleaving
of clients can overdraw one: the create path's moves (debit, refund) commit only if the documents
they write are unchanged since they were read (conditional.py), the rarer ones (grants, imports) in
Firestore transactions. A request's deduction and refund have the fixed ids `{requestId}_deduction`
and `{requestId}_refund` and are written with create(), so a second one for the same request cannot
exist whatever the retries. A request's status changes that move no credits (claim, complete,
requeue, heartbeat) are conditional writes too, so a concurrent change makes them fail, not win.

A user document counts its requests queued or running (`inFlight`): the debit checks and raises it,
the request's end lowers it, so the in-flight limit needs no query.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import zlib
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from imagegen.domain.audit import Violation
from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    StaleConfig,
    TooManyRequests,
    UserExists,
    UserNotFound,
)
from imagegen.domain.generation import GenerationRequest, Move, NewGeneration, Status, valid_id
from imagegen.domain.idempotency import Idempotency, StoredResponse
from imagegen.domain.ids import random_id
from imagegen.domain.keys import ApiKey
from imagegen.domain.ledger import (
    NO_FILTER,
    EntryType,
    LedgerEntry,
    LedgerFilter,
    debit_refusal,
    debit_refused,
    same_move,
)
from imagegen.domain.paging import Page, after_seq, after_time, seq_cursor, time_cursor
from imagegen.domain.reports import GroupCount
from imagegen.domain.users import User
from imagegen.domain.webhooks import WebhookDelivery, delivery_of
from imagegen.storage.firestore import audit, transfer
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.conditional import Reads, Writes, commit_unchanged
from imagegen.storage.firestore.errors import Contention, run_transaction, translate_errors, translated

log = logging.getLogger("imagegen.storage")
Transaction = firestore.Transaction
DESC = firestore.Query.DESCENDING
ASC = firestore.Query.ASCENDING
INITIAL_DATA_MARKER = "initial_data_loaded"
CONFIG_VERSION = "config_version"  # meta/config_version: changes with every catalog edit and revocation
SCHEMA_VERSION = 2  # 2: users count their requests in flight; keyed creates have a generationKeys doc
KNOWN_REQUESTS = 4096  # requests this process wrote last, with their update time (see _remember)
IN_FLIGHT = (Status.PENDING.value, Status.RUNNING.value)
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
        # The requests this process wrote last, as written: a later change of one (its job's end) can
        # be conditional on that write's update time without reading the document again.
        self._known: OrderedDict[str, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._known_lock = threading.Lock()

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

    def _generation_key(self, user_id: str, key: str) -> firestore.DocumentReference:
        """The document that gives a user's Idempotency-Key its one request: a second create() fails."""
        digest = hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()
        return self.db.collection(d.GENERATION_KEYS).document(digest)

    def _bump_config(self, writer: Any) -> None:
        """Changes the configuration version in the same write as the change it stands for."""
        writer.set(self._meta(CONFIG_VERSION), {"value": random_id()})

    # -- lifecycle --------------------------------------------------------------------------
    @translated
    def migrate(self) -> None:
        """Firestore has no schema; the version doc says which layout the data has (docs.py).

        Version 2 counts each user's requests in flight and gives keyed creates their key document:
        written from the requests here, once (before version-2 functions serve; docs/firebase.md).
        """
        ref = self._meta("schema")
        snap = ref.get()
        version = int((snap.to_dict() or {}).get("version", 0)) if snap.exists else 0
        if version >= SCHEMA_VERSION:
            return
        if snap.exists:
            self._count_in_flight_and_keys()
        ref.set({"version": SCHEMA_VERSION})

    def _count_in_flight_and_keys(self) -> None:
        in_flight: Counter[str] = Counter()
        batch, writes = self.db.batch(), 0
        fields = ["userId", "status", "idempotencyKey", "fingerprint", "createdAt"]
        for snap in self._requests().select(fields).stream():
            data = snap.to_dict() or {}
            in_flight[data["userId"]] += data["status"] in IN_FLIGHT
            if data.get("idempotencyKey"):
                key_doc = _generation_key_doc(
                    snap.id, data["userId"], data["idempotencyKey"], data.get("fingerprint")
                )
                batch.set(self._generation_key(data["userId"], data["idempotencyKey"]), key_doc)
                writes += 1
            if writes >= 400:
                batch.commit()
                batch, writes = self.db.batch(), 0
        for user_id, count in in_flight.items():
            batch.update(self._users().document(user_id), {"inFlight": count})
            writes += 1
            if writes >= 400:
                batch.commit()
                batch, writes = self.db.batch(), 0
        if writes:
            batch.commit()

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
            self._bump_config(tx)
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
    def config_version(self) -> str:
        snap = self._meta(CONFIG_VERSION).get()
        return _version(snap)

    @translated
    def config_snapshot(self) -> tuple[str, Catalog]:
        # The version first: a catalog newer than its version only costs a refresh, the reverse
        # would price with an old catalog under a new version.
        version = self.config_version()
        return version, self.catalog()

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
        batch = self.db.batch()
        batch.set(self.db.collection(d.MODELS).document(model.name), _model_doc(model))
        self._bump_config(batch)
        batch.commit()

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
            self._bump_config(tx)

        run_transaction(self.db, put)

    # -- users and credits ------------------------------------------------------------------
    def _create_user(self, tx: Transaction, user_id: str, credits: int, now: datetime, reason: str) -> None:
        tx.create(
            self._users().document(user_id),
            {"credits": credits, "createdAt": d.aware(now), "ledgerSeq": 1 if credits else 0, "inFlight": 0},
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
            user = _user_state(self._users().document(user_id).get(transaction=tx))
            if idempotency_key is not None:
                query = self._ledger(user_id).where(filter=cond("idempotencyKey", "==", idempotency_key))
                for snap in query.limit(1).stream(transaction=tx):
                    return same_move(d.entry_from(snap.id, user_id, snap.to_dict() or {}), entry_type, delta)
            move = _Move(user, entry_type, delta, None, reason, now, random_id(), idempotency_key)
            tx.update(self._users().document(user_id), move.user_changes())
            tx.create(self._ledger(user_id).document(move.entry.id), move.entry_doc)
            return move.entry

        with self._user_lock(user_id):
            return run_transaction(self.db, move)

    @translated
    def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]:
        query = self._ledger(user_id).order_by("seq", direction=DESC)
        if where.types:
            query = query.where(filter=cond("type", "in", sorted(e.value for e in where.types)))
        if cursor is not None:
            query = query.where(filter=cond("seq", "<", after_seq(cursor)))
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
        next_cursor = seq_cursor(found[limit - 1][0]) if len(found) > limit else None
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
        return self._debit(new, None, None)

    @translated
    def debit_and_claim(
        self, new: NewGeneration, worker_id: str, lease_until: datetime, config_version: str | None = None
    ) -> tuple[GenerationRequest, bool]:
        """Debits and creates the request already running under `worker_id`'s lease (ports.ClaimsOnCreate)."""
        return self._debit(new, (worker_id, lease_until), config_version)

    def _debit(
        self, new: NewGeneration, claim: tuple[str, datetime] | None, config_version: str | None
    ) -> tuple[GenerationRequest, bool]:
        """One read of the user, the configuration version (and the key's document), one commit."""
        spec = new.spec
        user_ref = self._users().document(spec.user_id)
        config_ref = self._meta(CONFIG_VERSION)
        request_ref = self._requests().document(new.id)
        key = new.idempotency_key
        key_ref = None if key is None else self._generation_key(spec.user_id, key)
        doc = _new_request_doc(new) if claim is None else _claimed_request_doc(new, *claim)
        request = d.request_from(new.id, doc)

        def decide(reads: Reads, writes: Writes) -> tuple[GenerationRequest, bool]:
            if key_ref is not None and reads[key_ref].exists:
                return self._replay(reads[key_ref].to_dict() or {}, new), False
            if config_version is not None and _version(reads[config_ref]) != config_version:
                raise StaleConfig
            user = _user_state(reads[user_ref])
            refusal = debit_refusal(user.credits, user.in_flight, new.cost, new.max_in_flight)
            if refusal is not None:
                raise debit_refused(
                    refusal,
                    spec.user_id,
                    cost=new.cost,
                    in_flight=user.in_flight,
                    max_in_flight=new.max_in_flight,
                )
            entry_id = d.entry_id(new.id, EntryType.DEDUCTION)
            move = _Move(user, EntryType.DEDUCTION, -new.cost, new.id, None, new.created_at, entry_id)
            writes.create(request_ref, doc)
            writes.create(self._ledger(spec.user_id).document(entry_id), move.entry_doc)
            writes.update(reads[user_ref], move.user_changes(in_flight=+1))
            if key_ref is not None and key is not None:
                writes.create(key_ref, _generation_key_doc(new.id, spec.user_id, key, new.fingerprint))
            if claim is not None:
                self._enqueue_webhook(writes, request, "start", new.created_at)
            return request, True

        refs = [user_ref, config_ref] if key_ref is None else [user_ref, config_ref, key_ref]
        try:
            with self._user_lock(spec.user_id):
                (found, fresh), writes = commit_unchanged(self.db, refs, decide)
        except Contention as exc:
            # The user's balance kept changing under this debit: more creates at once than one
            # document takes. Nothing was written; the client may send it again.
            raise TooManyRequests(
                f"User {spec.user_id} has too many creates at once; try again",
                retry_after=1,
                userId=spec.user_id,
            ) from exc
        if fresh:
            self._remember(new.id, writes.update_times[request_ref.path], doc)
        return found, fresh

    def _replay(self, key: dict[str, Any], new: NewGeneration) -> GenerationRequest:
        if key.get("fingerprint") != new.fingerprint:
            raise IdempotencyConflict(
                "Idempotency-Key was already used with a different request body",
                idempotencyKey=new.idempotency_key,
            )
        snap = self._requests().document(key["requestId"]).get()
        return d.request_from(snap.id, snap.to_dict() or {})

    def _remember(self, request_id: str, update_time: Any, data: dict[str, Any]) -> None:
        with self._known_lock:
            self._known[request_id] = (update_time, data)
            self._known.move_to_end(request_id)
            while len(self._known) > KNOWN_REQUESTS:
                self._known.popitem(last=False)

    def _recall(self, request_id: str) -> tuple[Any, dict[str, Any]] | None:
        with self._known_lock:
            return self._known.pop(request_id, None)

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
            at, last_id = after_time(cursor)
            query = query.start_after({"createdAt": at, "__name__": last_id})
        found = [d.request_from(s.id, s.to_dict() or {}) for s in query.limit(limit + 1).stream()]
        next_cursor = None
        if len(found) > limit:
            last = found[limit - 1]
            next_cursor = time_cursor(last.created_at, last.id)
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
        if not Move.CLAIM.allows(Status(data["status"])):
            return None
        changes = {
            "status": Move.CLAIM.target.value,
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
            results = batch.commit()
        except (gexc.FailedPrecondition, gexc.NotFound):
            return None  # changed since we read it: another worker claimed it, or it was canceled
        self._remember(snap.id, results[0].update_time, {**data, **changes})
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
        """Completed, if still running under `worker_id`; the user has one request fewer in flight.

        The job's own process usually knows the document as it wrote it (the claim): then the write
        is conditional on that version, one round trip; otherwise, or if it changed, it reads first.
        """
        ref = self._requests().document(request_id)
        changes = {
            "status": Move.COMPLETE.target.value,
            "imageUrl": image_url,
            "completedAt": d.aware(now),
            "leaseOwner": None,
            "leaseExpiresAt": None,
        }

        def write(writes: Writes, snap: Any, data: dict[str, Any]) -> bool:
            if not _running_for(data, worker_id):
                return False
            writes.update(snap, changes)
            writes.increment(self._users().document(data["userId"]), "inFlight", -1)
            self._enqueue_webhook(writes, d.request_from(request_id, {**data, **changes}), "completed", now)
            return True

        known = self._recall(request_id)
        if known is not None:
            writes = Writes(self.db)
            if write(writes, _Known(ref, known[0]), known[1]):
                try:
                    writes.commit()
                    return True
                except (gexc.FailedPrecondition, gexc.Aborted):
                    pass  # changed since this process wrote it: decide again on what it is now

        def decide(reads: Reads, writes: Writes) -> bool:
            snap = reads[ref]
            return snap.exists and write(writes, snap, snap.to_dict() or {})

        done, _ = commit_unchanged(self.db, [ref], decide)
        return done

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
            if not Move.FAIL.allows(Status(data["status"])):
                return False
            if worker_id is not None and data.get("leaseOwner") != worker_id:
                return False
            expires = d.utc(data.get("leaseExpiresAt"))
            return not lease_expired or (expires is not None and expires < now)

        return self._finish_with_refund(request_id, failing, Move.FAIL, error, now)

    @translated
    def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        def pending(data: dict[str, Any]) -> bool:
            return Move.CANCEL.allows(Status(data["status"]))

        return self._finish_with_refund(request_id, pending, Move.CANCEL, "canceled", now)

    def _finish_with_refund(
        self,
        request_id: str,
        condition: Callable[[dict[str, Any]], bool],
        ending: Move,
        error: str,
        now: datetime,
    ) -> bool:
        if not valid_id(request_id):
            return False
        ref = self._requests().document(request_id)
        known = self._recall(request_id)  # as this process wrote it: its user, if not its state now
        found = known[1] if known is not None else ref.get().to_dict()
        if found is None or (known is None and not condition(found)):
            return False  # a quick no: the write below checks again
        user_ref = self._users().document(str(found["userId"]))

        def decide(reads: Reads, writes: Writes) -> bool:
            snap = reads[ref]
            data = snap.to_dict() or {}
            if not snap.exists or not condition(data):
                return False
            changes = {
                "status": ending.target.value,
                "error": error,
                "completedAt": d.aware(now),
                "leaseOwner": None,
                "leaseExpiresAt": None,
            }
            refund_id = d.entry_id(request_id, EntryType.REFUND)
            refund = _Move(
                _user_state(reads[user_ref]),
                EntryType.REFUND,
                int(data["cost"]),
                request_id,
                error,
                now,
                refund_id,
            )
            writes.update(snap, changes)
            writes.create(self._ledger(refund.user.id).document(refund_id), refund.entry_doc)
            writes.update(reads[user_ref], refund.user_changes(in_flight=-1))
            self._enqueue_webhook(writes, d.request_from(request_id, {**data, **changes}), "completed", now)
            return True

        with self._user_lock(user_ref.id):
            done, _ = commit_unchanged(self.db, [ref, user_ref], decide)
        return done

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
            if not Move.REQUEUE.allows(Status(data["status"])) or expires is None or expires >= now:
                return None
            return {"status": Move.REQUEUE.target.value, "leaseOwner": None, "leaseExpiresAt": None}

        return self._conditional_update(self._requests().document(request_id), decide) is not None

    def _enqueue_webhook(self, writer: Any, request: GenerationRequest, event: str, now: datetime) -> None:
        """Adds the webhook outbox document to the same transaction or batch as the state change."""
        delivery = delivery_of(request, event, now)
        if delivery is None:
            return
        writer.create(
            self.db.collection(d.WEBHOOKS).document(delivery.id),
            {
                "generationRequestId": delivery.generation_request_id,
                "event": delivery.event,
                "url": delivery.url,
                "payload": delivery.payload,
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
            self._bump_config(tx)  # processes that cached the key must look again
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
            at, last_id = after_time(cursor)
            query = query.start_after({order: at, "__name__": last_id})
        snaps = list(query.limit(limit + 1).stream())
        next_cursor = None
        if len(snaps) > limit:
            last = snaps[limit - 1]
            started = d.required_utc((last.to_dict() or {})[d.REPORT_META]["periodStart"])
            next_cursor = time_cursor(started, last.id)
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
    """A user's balance, ledger counter and requests in flight, as read for one credit move."""

    __slots__ = ("id", "credits", "seq", "in_flight")

    def __init__(self, user_id: str, credits: int, seq: int, in_flight: int) -> None:
        self.id = user_id
        self.credits = credits
        self.seq = seq
        self.in_flight = in_flight


def _user_state(snap: Any) -> _UserState:
    if not snap.exists:
        raise UserNotFound(snap.id)
    data = snap.to_dict() or {}
    return _UserState(
        snap.id, int(data["credits"]), int(data.get("ledgerSeq") or 0), int(data.get("inFlight") or 0)
    )


class _Move:
    """One ledger entry and the user document's new balance and counter (never below 0 credits)."""

    def __init__(
        self,
        user: _UserState,
        entry_type: EntryType,
        delta: int,
        request_id: str | None,
        reason: str | None,
        now: datetime,
        entry_id: str,
        idempotency_key: str | None = None,
    ) -> None:
        balance = user.credits + delta
        if balance < 0:
            raise InsufficientCredits("Insufficient credits", userId=user.id, required=-delta)
        self.user = user
        self.seq = user.seq + 1
        self.entry = LedgerEntry(entry_id, user.id, entry_type, delta, balance, request_id, reason, now)
        self.entry_doc = d.entry_doc(self.entry, self.seq, idempotency_key)

    def user_changes(self, in_flight: int = 0) -> dict[str, Any]:
        changes: dict[str, Any] = {"credits": self.entry.balance_after, "ledgerSeq": self.seq}
        if in_flight:
            changes["inFlight"] = self.user.in_flight + in_flight
        return changes


class _Known:
    """A request document as this process last wrote it: enough to write it again conditionally."""

    def __init__(self, reference: firestore.DocumentReference, update_time: Any) -> None:
        self.reference = reference
        self.update_time = update_time


def _version(snap: Any) -> str:
    return str((snap.to_dict() or {}).get("value") or "") if snap.exists else ""


def _running_for(data: dict[str, Any], worker_id: str) -> bool:
    return Move.COMPLETE.allows(Status(data["status"])) and data.get("leaseOwner") == worker_id


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


def _claimed_request_doc(new: NewGeneration, worker_id: str, lease_until: datetime) -> dict[str, Any]:
    """A new request already running under `worker_id`'s lease: its creator runs it (no claim)."""
    return {
        **_new_request_doc(new),
        "status": Status.RUNNING.value,
        "attempts": 1,
        "startedAt": d.aware(new.created_at),
        "leaseOwner": worker_id,
        "leaseExpiresAt": d.aware(lease_until),
    }


def _generation_key_doc(request_id: str, user_id: str, key: str, fingerprint: str | None) -> dict[str, Any]:
    return {"requestId": request_id, "userId": user_id, "key": key, "fingerprint": fingerprint}


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
