"""API keys, stored as hashes; revoking one changes the configuration version (see catalog.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, or_, select, update

from imagegen.domain.keys import ApiKey
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.catalog import bump_config_version
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.parts import SqlParts


def add_key(conn: Connection, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
    conn.execute(insert(t.api_keys).values(id=key_id, key_hash=key_hash, user_id=user_id, created_at=now))
    return ApiKey(key_id, user_id, now)


def find_key(conn: Connection, key_hash: str) -> ApiKey | None:
    row = conn.execute(sql.FIND_API_KEY, {"p_hash": key_hash}).first()
    return None if row is None else key_of(row)


def key_of(row: Row[Any]) -> ApiKey:
    return ApiKey(row.id, row.user_id, row.created_at, row.revoked_at, row.last_used_at)


def list_keys(conn: Connection, user_id: str | None) -> list[ApiKey]:
    keys = t.api_keys
    query = select(keys).order_by(keys.c.created_at, keys.c.id)
    if user_id is not None:
        query = query.where(keys.c.user_id == user_id)
    return [key_of(row) for row in conn.execute(query)]


USE_KEY = (
    update(t.api_keys)
    .where(
        t.api_keys.c.id == bindparam("p_id"),
        or_(t.api_keys.c.last_used_at.is_(None), t.api_keys.c.last_used_at < bindparam("p_at")),
    )
    .values(last_used_at=bindparam("p_at"))
)


def record_uses(conn: Connection, used: dict[str, datetime]) -> None:
    # Not a configuration change: the version stays, and no process forgets its cached keys.
    conn.execute(USE_KEY, [{"p_id": key_id, "p_at": at} for key_id, at in used.items()])


def revoke_key(conn: Connection, key_id: str, now: datetime) -> bool:
    keys = t.api_keys
    result = conn.execute(
        update(keys).where(keys.c.id == key_id, keys.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    bump_config_version(conn)
    return result.rowcount == 1


class SqlKeys(SqlParts):
    @retrying
    def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
        with self.tx.write() as conn:
            return add_key(conn, key_id, key_hash, user_id, now)

    @retrying
    def find_api_key(self, key_hash: str) -> ApiKey | None:
        with self.tx.read() as conn:
            return find_key(conn, key_hash)

    @retrying
    def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        with self.tx.write() as conn:
            return revoke_key(conn, key_id, now)

    @retrying
    def list_api_keys(self, user_id: str | None) -> list[ApiKey]:
        with self.tx.read() as conn:
            return list_keys(conn, user_id)

    @retrying
    def record_key_uses(self, used: dict[str, datetime]) -> None:
        if used:
            with self.tx.write() as conn:
                record_uses(conn, used)
