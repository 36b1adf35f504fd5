"""Idempotency-Key answers kept for replay (see api/idempotency.py): one row per scope and key."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from imagegen.domain.errors import IdempotencyConflict
from imagegen.domain.idempotency import Idempotency, StoredResponse
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.parts import SqlParts

ik = t.idempotency_keys


class SqlIdempotency(SqlParts):
    @retrying
    def begin_idempotent(
        self, scope: str, key: str, fingerprint: str, now: datetime, lock_until: datetime
    ) -> Idempotency:
        try:
            with self.tx.write() as conn:
                row = conn.execute(select(ik).where(ik.c.scope == scope, ik.c.key == key)).first()
                if row is None:
                    conn.execute(
                        insert(ik).values(
                            scope=scope,
                            key=key,
                            fingerprint=fingerprint,
                            state="in_progress",
                            created_at=now,
                            locked_until=lock_until,
                        )
                    )
                    return Idempotency("new")
                if row.fingerprint != fingerprint:
                    raise IdempotencyConflict(
                        "Idempotency-Key was already used with a different request", idempotencyKey=key
                    )
                if row.state == "done":
                    headers = dict(row.response_headers or {})
                    return Idempotency(
                        "replay", StoredResponse(row.response_status, row.response_body, headers)
                    )
                if row.locked_until is not None and row.locked_until > now:
                    return Idempotency("busy")
                # The first attempt's process died mid-request: take over. The effect itself is
                # deduplicated where it is written (request or ledger entry keyed by the same key).
                conn.execute(
                    update(ik).where(ik.c.scope == scope, ik.c.key == key).values(locked_until=lock_until)
                )
                return Idempotency("new")
        except IntegrityError:
            return Idempotency("busy")  # a concurrent first attempt inserted the key a moment ago

    @retrying
    def finish_idempotent(self, scope: str, key: str, response: StoredResponse) -> None:
        with self.tx.write() as conn:
            conn.execute(
                update(ik)
                .where(ik.c.scope == scope, ik.c.key == key)
                .values(
                    state="done",
                    response_status=response.status,
                    response_body=response.body,
                    response_headers=response.headers,
                    locked_until=None,
                )
            )

    @retrying
    def release_idempotent(self, scope: str, key: str) -> None:
        with self.tx.write() as conn:
            conn.execute(delete(ik).where(ik.c.scope == scope, ik.c.key == key, ik.c.state == "in_progress"))

    @retrying
    def purge_idempotency(self, created_before: datetime) -> int:
        with self.tx.write() as conn:
            return conn.execute(delete(ik).where(ik.c.created_at < created_before)).rowcount
