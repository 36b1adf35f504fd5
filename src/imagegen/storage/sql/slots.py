"""Engine slots in SQL: a deployment's numbered slots, one row each while held (ports.EngineSlots).

A slot is taken by inserting its row, or by updating a row whose lease ran out, conditionally:
of two processes after the same slot, one inserts or updates it and the other moves to the next.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError

from imagegen.storage.sql import tables as t
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.parts import SqlParts

slots = t.engine_slots


class SqlSlots(SqlParts):
    @retrying
    def take_slot(self, key: str, limit: int, holder: str, until: datetime, now: datetime) -> bool:
        return any(self._take(key, slot, holder, until, now) for slot in range(limit))

    def _take(self, key: str, slot: int, holder: str, until: datetime, now: datetime) -> bool:
        this = (slots.c.key == key, slots.c.slot == slot)
        try:
            with self.tx.write() as conn:
                freed = conn.execute(
                    update(slots)
                    .where(*this, slots.c.expires_at <= now)
                    .values(holder=holder, expires_at=until)
                )
                if freed.rowcount == 1:
                    return True
                taken = conn.execute(slots.select().where(*this)).first()
                if taken is not None:
                    return False
                conn.execute(insert(slots).values(key=key, slot=slot, holder=holder, expires_at=until))
                return True
        except IntegrityError:
            return False  # another process inserted it first

    @retrying
    def release_slot(self, key: str, holder: str) -> None:
        with self.tx.write() as conn:
            conn.execute(delete(slots).where(slots.c.key == key, slots.c.holder == holder))
