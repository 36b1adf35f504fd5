"""The Firestore database, in the case study's collections (see docs.py for the documents): one
synchronous class made of one part per concern, plus what concerns the database as a whole (its
layout version, the initial data, audit and transfers).

Every credit move is a read-check-write (never a blind Increment of a balance), so no interleaving
of clients can overdraw one: the create path's moves (debit, refund) commit only if the documents
they write are unchanged since they were read (conditional.py), the rarer ones (grants, imports) in
Firestore transactions. The adapter the service layer awaits (adapter.py) runs these methods on its
threads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Iterable
from datetime import datetime
from typing import Any

from imagegen.domain.audit import Violation
from imagegen.domain.catalog import Catalog
from imagegen.domain.generation import Status
from imagegen.storage.firestore import audit, transfer
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.catalog import FirestoreCatalog, model_doc
from imagegen.storage.firestore.credits import FirestoreCredits
from imagegen.storage.firestore.errors import run_transaction, translate_errors, translated
from imagegen.storage.firestore.generations import FirestoreGenerations, generation_key_doc
from imagegen.storage.firestore.idempotency import FirestoreIdempotency
from imagegen.storage.firestore.jobs import FirestoreJobs
from imagegen.storage.firestore.keys import FirestoreKeys, key_doc
from imagegen.storage.firestore.outbox import FirestoreOutbox
from imagegen.storage.firestore.parts import Transaction
from imagegen.storage.firestore.reports import FirestoreReports
from imagegen.storage.firestore.schedule import FirestoreSchedule
from imagegen.storage.firestore.slots import FirestoreSlots

INITIAL_DATA_MARKER = "initial_data_loaded"
SCHEMA_VERSION = 2  # 2: users count their requests in flight; keyed creates have a generationKeys doc
IN_FLIGHT = (Status.PENDING.value, Status.RUNNING.value)


class FirestoreDatabase(
    FirestoreCatalog,
    FirestoreCredits,
    FirestoreGenerations,
    FirestoreJobs,
    FirestoreKeys,
    FirestoreIdempotency,
    FirestoreOutbox,
    FirestoreReports,
    FirestoreSchedule,
    FirestoreSlots,
):
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
                key_doc = generation_key_doc(
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
                tx.set(self.db.collection(d.MODELS).document(model.name), model_doc(model))
            for kind, names in (("styles", catalog.styles), ("colors", catalog.colors)):
                for name in sorted(names):
                    tx.set(self.db.collection(kind).document(name), {"enabled": True})
            for name, cost in catalog.sizes.items():
                tx.set(self.db.collection("sizes").document(name), {"cost": cost, "enabled": True})
            for (user_id, credits), exists in zip(users.items(), existing, strict=True):
                if not exists:
                    self._create_user(tx, user_id, credits, now, "initial data")
            for key_id, key_hash, key_user in keys:
                tx.create(self.db.collection(d.API_KEYS).document(key_id), key_doc(key_hash, key_user, now))
            tx.create(marker, {"value": now.isoformat()})
            self._bump_config(tx)
            return True

        return run_transaction(self.db, load)

    @translated
    def ping(self) -> None:
        self._meta("schema").get(retry=None, timeout=5)

    def close(self) -> None:
        self.db.close()

    def violations(self) -> list[Violation]:
        with translate_errors():
            return list(audit.violations(self.db))

    def export_records(self) -> Generator[dict[str, Any], None, None]:
        with translate_errors():
            yield from transfer.export_records(self.db)

    @translated
    def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
        return transfer.import_records(self.db, records, now)
