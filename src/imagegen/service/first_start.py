"""The first start of a new database: the initial data set and its keys, loaded once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from imagegen.domain.catalog import INITIAL_DATA, Catalog, InitialData
from imagegen.domain.ids import new_id
from imagegen.ports import Database
from imagegen.service.keys import hash_key, new_key


@dataclass(frozen=True)
class FirstStart:
    admin_key: str
    user_keys: dict[str, str]


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
    admin_key = new_key()
    user_keys = {user_id: new_key() for user_id in data.users}
    keys: list[tuple[str, str, str | None]] = [(new_id(), hash_key(admin_key), None)]
    keys += [(new_id(), hash_key(key), user_id) for user_id, key in user_keys.items()]
    if not await storage.load_initial_data(catalog, dict(data.users), keys, now):
        return None
    return FirstStart(admin_key, user_keys)
