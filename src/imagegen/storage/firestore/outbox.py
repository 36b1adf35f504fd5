"""The webhook outbox on Firestore (deliveries claimed and sent by a dispatcher), and `meta`'s
settings (the signing secret). The deliveries themselves are written beside the state change they
report (parts.FirestoreParts._enqueue_webhook).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from imagegen.domain.webhooks import DeliveryState, WebhookDelivery
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import run_transaction, translated
from imagegen.storage.firestore.parts import FirestoreParts, Transaction, cond


class FirestoreOutbox(FirestoreParts):
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
                claimed.append((snap.reference, delivery_from(snap.id, data, attempts)))
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

    @translated
    def request_webhooks(self, request_id: str) -> list[DeliveryState]:
        query = self.db.collection(d.WEBHOOKS).where(filter=cond("generationRequestId", "==", request_id))
        states = []
        for snap in query.stream():
            data = snap.to_dict() or {}
            states.append(
                DeliveryState(
                    snap.id,
                    data["event"],
                    data["url"],
                    data["state"],
                    int(data.get("attempts") or 0),
                    data.get("lastError"),
                    d.required_utc(data["createdAt"]),
                    d.utc(data.get("deliveredAt")),
                )
            )
        return sorted(states, key=lambda state: (state.created_at, state.id))

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


def delivery_from(delivery_id: str, data: dict[str, Any], attempts: int) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id,
        data["generationRequestId"],
        data["event"],
        data["url"],
        dict(data["payload"]),
        attempts,
        d.required_utc(data["createdAt"]),
    )
