"""The webhook outbox in memory: deliveries added under the same lock as the change they report
(parts.py), then claimed and sent by a dispatcher; and the deployment's settings kept in `meta`
(the signing secret).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from imagegen.domain.webhooks import DeliveryState, WebhookDelivery
from imagegen.storage.memory.parts import MemoryParts


class MemoryOutbox(MemoryParts):
    async def claim_webhooks(self, now: datetime, lease_until: datetime, limit: int) -> list[WebhookDelivery]:
        with self._lock:
            due = [
                d
                for d in self._state.deliveries.values()
                if d.state == "pending"
                and d.next_attempt_at <= now
                and (d.lease_expires_at is None or d.lease_expires_at < now)
            ]
            due.sort(key=lambda d: d.next_attempt_at)
            claimed = []
            for stored in due[:limit]:
                stored.lease_expires_at = lease_until
                stored.delivery = replace(stored.delivery, attempts=stored.delivery.attempts + 1)
                claimed.append(stored.delivery)
            return claimed

    async def webhook_delivered(self, delivery_id: str, now: datetime) -> None:
        with self._lock:
            stored = self._state.deliveries.get(delivery_id)
            if stored is not None:
                stored.state, stored.lease_expires_at, stored.last_error = "delivered", None, None
                stored.delivered_at = now

    async def webhook_failed(self, delivery_id: str, error: str, retry_at: datetime | None) -> None:
        with self._lock:
            stored = self._state.deliveries.get(delivery_id)
            if stored is None:
                return
            stored.last_error, stored.lease_expires_at = error[:1000], None
            if retry_at is None:
                stored.state = "abandoned"
            else:
                stored.next_attempt_at = retry_at

    async def get_meta(self, key: str) -> str | None:
        with self._lock:
            return self._state.meta.get(key)

    async def put_meta_once(self, key: str, value: str) -> str:
        with self._lock:
            return self._state.meta.setdefault(key, value)

    async def request_webhooks(self, request_id: str) -> list[DeliveryState]:
        with self._lock:
            rows = [
                r for r in self._state.deliveries.values() if r.delivery.generation_request_id == request_id
            ]
            states = [
                DeliveryState(
                    r.delivery.id,
                    r.delivery.event,
                    r.delivery.url,
                    r.state,
                    r.delivery.attempts,
                    r.last_error,
                    r.delivery.created_at,
                    r.delivered_at,
                )
                for r in rows
            ]
        return sorted(states, key=lambda state: (state.created_at, state.id))
