"""Responses kept for replay under a client's Idempotency-Key, on Firestore (see api/idempotency.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from imagegen.domain.errors import IdempotencyConflict
from imagegen.domain.idempotency import Idempotency, StoredResponse
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import run_transaction, translated
from imagegen.storage.firestore.parts import FirestoreParts, Transaction, cond


class FirestoreIdempotency(FirestoreParts):
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
