"""API keys on Firestore, stored as hashes; a revocation changes the configuration version."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from imagegen.domain.generation import valid_id
from imagegen.domain.keys import ApiKey
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import run_transaction, translated
from imagegen.storage.firestore.parts import FirestoreParts, Transaction, cond


class FirestoreKeys(FirestoreParts):
    @translated
    def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
        self.db.collection(d.API_KEYS).document(key_id).create(key_doc(key_hash, user_id, now))
        return ApiKey(key_id, user_id, now)

    @translated
    def find_api_key(self, key_hash: str) -> ApiKey | None:
        query = self.db.collection(d.API_KEYS).where(filter=cond("keyHash", "==", key_hash))
        for snap in query.limit(5).stream():
            data = snap.to_dict() or {}
            if data.get("revokedAt") is None:
                return key_of(snap.id, data)
        return None

    @translated
    def list_api_keys(self, user_id: str | None) -> list[ApiKey]:
        query: Any = self.db.collection(d.API_KEYS)
        if user_id is not None:
            query = query.where(filter=cond("userId", "==", user_id))
        keys = [key_of(snap.id, snap.to_dict() or {}) for snap in query.stream()]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    @translated
    def record_key_uses(self, used: dict[str, datetime]) -> None:
        # One transaction per key: a use moves `lastUsedAt` forward only, and the configuration
        # version stays as it is (a use is not a change anyone must see before their next create).
        for key_id, at in used.items():
            if valid_id(key_id):
                self._record_use(self.db.collection(d.API_KEYS).document(key_id), at)

    def _record_use(self, ref: Any, at: datetime) -> None:
        def record(tx: Transaction) -> None:
            snap = ref.get(transaction=tx)
            if not snap.exists:
                return
            last = d.utc((snap.to_dict() or {}).get("lastUsedAt"))
            if last is None or last < at:
                tx.update(ref, {"lastUsedAt": d.aware(at)})

        run_transaction(self.db, record)

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


def key_of(key_id: str, data: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id,
        data.get("userId"),
        d.required_utc(data["createdAt"]),
        d.utc(data.get("revokedAt")),
        d.utc(data.get("lastUsedAt")),
    )


def key_doc(key_hash: str, user_id: str | None, now: datetime) -> dict[str, Any]:
    return {"keyHash": key_hash, "userId": user_id, "createdAt": d.aware(now), "revokedAt": None}
