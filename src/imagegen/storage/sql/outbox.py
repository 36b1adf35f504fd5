"""The webhook outbox: deliveries written in the same transaction as the change they report, then
claimed and sent by a dispatcher; and the deployment's settings kept in `meta` (the signing secret)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from imagegen.domain.generation import GenerationRequest
from imagegen.domain.webhooks import DeliveryState, WebhookDelivery, delivery_of
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.parts import SqlParts

wd = t.webhook_deliveries


def enqueue_webhook(conn: Connection, request: GenerationRequest, event: str, now: datetime) -> None:
    """Writes the delivery of `event` if the request asked for it, in the caller's transaction."""
    delivery = delivery_of(request, event, now)
    if delivery is None:
        return
    conn.execute(
        insert(wd).values(
            id=delivery.id,
            generation_request_id=delivery.generation_request_id,
            event=delivery.event,
            url=delivery.url,
            payload=delivery.payload,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


class SqlOutbox(SqlParts):
    @retrying
    def claim_webhooks(self, now: datetime, lease_until: datetime, limit: int) -> list[WebhookDelivery]:
        due = (
            select(wd.c.id)
            .where(
                wd.c.state == "pending",
                wd.c.next_attempt_at <= now,
                (wd.c.lease_expires_at.is_(None)) | (wd.c.lease_expires_at < now),
            )
            .order_by(wd.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.tx.write() as conn:
            ids = list(conn.execute(due).scalars())
            if not ids:
                return []
            rows = conn.execute(
                update(wd)
                .where(wd.c.id.in_(ids))
                .values(lease_expires_at=lease_until, attempts=wd.c.attempts + 1)
                .returning(*wd.c)
            ).all()
        return [
            WebhookDelivery(
                r.id, r.generation_request_id, r.event, r.url, dict(r.payload), r.attempts, r.created_at
            )
            for r in sorted(rows, key=lambda r: r.next_attempt_at)
        ]

    @retrying
    def webhook_delivered(self, delivery_id: str, now: datetime) -> None:
        with self.tx.write() as conn:
            conn.execute(
                update(wd)
                .where(wd.c.id == delivery_id)
                .values(state="delivered", delivered_at=now, lease_expires_at=None, last_error=None)
            )

    @retrying
    def webhook_failed(self, delivery_id: str, error: str, retry_at: datetime | None) -> None:
        values: dict[str, Any] = {"last_error": error[:1000], "lease_expires_at": None}
        if retry_at is None:
            values["state"] = "abandoned"
        else:
            values["next_attempt_at"] = retry_at
        with self.tx.write() as conn:
            conn.execute(update(wd).where(wd.c.id == delivery_id).values(values))

    @retrying
    def request_webhooks(self, request_id: str) -> list[DeliveryState]:
        """A scan of the outbox by request (no index: it is read for one request's page)."""
        columns = (wd.c.id, wd.c.event, wd.c.url, wd.c.state, wd.c.attempts, wd.c.last_error)
        query = (
            select(*columns, wd.c.created_at, wd.c.delivered_at)
            .where(wd.c.generation_request_id == request_id)
            .order_by(wd.c.created_at, wd.c.id)
        )
        with self.tx.read() as conn:
            return [DeliveryState(*row) for row in conn.execute(query).all()]

    @retrying
    def get_meta(self, key: str) -> str | None:
        with self.tx.read() as conn:
            return conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).scalar_one_or_none()

    @retrying
    def put_meta_once(self, key: str, value: str) -> str:
        """Stores `value` unless the key has one already; returns the value that is stored."""
        try:
            with self.tx.write() as conn:
                existing = conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).first()
                if existing is not None:
                    return str(existing.value)
                conn.execute(insert(t.meta).values(key=key, value=value))
                return value
        except IntegrityError:
            stored = self.get_meta(key)
            assert stored is not None
            return stored
