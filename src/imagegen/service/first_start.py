"""The first start of a new database: the initial data set and its keys, loaded once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from imagegen.domain.catalog import INITIAL_DATA, Catalog, InitialData
from imagegen.domain.ids import new_id
from imagegen.ports import Database
from imagegen.service.keys import IssuedKey, hash_key, new_key


@dataclass(frozen=True)
class FirstStart:
    admin: IssuedKey
    users: dict[str, IssuedKey]  # user id -> its key

    @property
    def admin_key(self) -> str:
        return self.admin.key

    @property
    def user_keys(self) -> dict[str, str]:
        return {user_id: issued.key for user_id, issued in self.users.items()}


async def first_start(
    storage: Database, now: datetime, data: InitialData = INITIAL_DATA
) -> FirstStart | None:
    """Loads the initial data set and creates its keys, once per database; None if already done."""
    catalog = Catalog(
        models={m.name: m for m in data.models},
        styles=frozenset(data.styles),
        colors=frozenset(data.colors),
        sizes=dict(data.sizes),
    )
    admin = IssuedKey(new_id(), new_key())
    users = {user_id: IssuedKey(new_id(), new_key(), user_id) for user_id in data.users}
    keys: list[tuple[str, str, str | None]] = [(admin.id, hash_key(admin.key), None)]
    keys += [(issued.id, hash_key(issued.key), user_id) for user_id, issued in users.items()]
    if not await storage.load_initial_data(catalog, dict(data.users), keys, now):
        return None
    return FirstStart(admin, users)
