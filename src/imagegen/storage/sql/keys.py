"""API keys, stored as hashes; revoking one changes the configuration version (see catalog.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, insert, update

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
    return None if row is None else ApiKey(row.id, row.user_id, row.created_at, row.revoked_at)


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
