"""The catalog (models, styles, colors, sizes with their cost) and its configuration version.

Every edit of the catalog, and every key revocation, changes the version in the same transaction:
a process that priced a create from a cached copy finds out at the debit (StaleConfig) and redoes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, insert, update

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.errors import InvalidInput
from imagegen.domain.ids import new_id
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.parts import SqlParts
from imagegen.storage.sql.rows import model_from, model_values

OPTION_TABLES = {"styles": t.styles, "colors": t.colors, "sizes": t.sizes}


def read_catalog(conn: Connection) -> Catalog:
    models = {row.name: model_from(row) for row in conn.execute(sql.MODELS)}
    styles = conn.execute(sql.ENABLED_STYLES).scalars()
    colors = conn.execute(sql.ENABLED_COLORS).scalars()
    sizes = conn.execute(sql.ENABLED_SIZES)
    return Catalog(models, frozenset(styles), frozenset(colors), {name: cost for name, cost in sizes})


def read_model(conn: Connection, name: str) -> ModelSettings | None:
    row = conn.execute(sql.MODEL, {"p_name": name}).first()
    return None if row is None else model_from(row)


def read_version(conn: Connection) -> str:
    return conn.execute(sql.CONFIG_VERSION).scalar() or ""


def read_snapshot(conn: Connection) -> tuple[str, Catalog]:
    # The version first: a catalog newer than its version only costs a refresh, the reverse would
    # price with an old catalog under a new version.
    return read_version(conn), read_catalog(conn)


def write_model(conn: Connection, model: ModelSettings) -> None:
    values = model_values(model)
    changed = conn.execute(update(t.models).where(t.models.c.name == model.name).values(values))
    if changed.rowcount == 0:
        conn.execute(insert(t.models).values(name=model.name, **values))
    bump_config_version(conn)


def write_option(conn: Connection, kind: str, name: str, *, enabled: bool, cost: int | None) -> None:
    table = OPTION_TABLES[kind]
    values: dict[str, Any] = {"enabled": enabled}
    if cost is not None:
        values["cost"] = cost
    changed = conn.execute(update(table).where(table.c.name == name).values(values))
    if changed.rowcount == 0:
        if kind == "sizes" and cost is None:
            raise InvalidInput(f"A new size needs a cost: '{name}' is not in the catalog yet")
        conn.execute(insert(table).values(name=name, **values))
    bump_config_version(conn)


def insert_catalog(conn: Connection, catalog: Catalog) -> None:
    for model in catalog.models.values():
        conn.execute(insert(t.models).values(name=model.name, **model_values(model)))
    conn.execute(insert(t.styles), [{"name": name, "enabled": True} for name in sorted(catalog.styles)])
    conn.execute(insert(t.colors), [{"name": name, "enabled": True} for name in sorted(catalog.colors)])
    conn.execute(
        insert(t.sizes),
        [{"name": name, "cost": cost, "enabled": True} for name, cost in catalog.sizes.items()],
    )


def bump_config_version(conn: Connection) -> None:
    """Marks the catalog or the keys as changed: every process's cached copy is stale from now on."""
    version = new_id()
    if conn.execute(sql.SET_CONFIG_VERSION, {"p_version": version}).rowcount == 0:
        conn.execute(insert(t.meta).values(key=sql.CONFIG_VERSION_KEY, value=version))


class SqlCatalog(SqlParts):
    @retrying
    def catalog(self) -> Catalog:
        with self.tx.read() as conn:
            return read_catalog(conn)

    @retrying
    def model_settings(self, name: str) -> ModelSettings | None:
        with self.tx.statement() as conn:
            return read_model(conn, name)

    @retrying
    def config_version(self) -> str:
        with self.tx.read() as conn:
            return read_version(conn)

    @retrying
    def config_snapshot(self) -> tuple[str, Catalog]:
        with self.tx.read() as conn:
            return read_snapshot(conn)

    @retrying
    def put_model(self, model: ModelSettings) -> None:
        with self.tx.write() as conn:
            write_model(conn, model)

    @retrying
    def update_model(
        self, name: str, change: Callable[[ModelSettings | None], ModelSettings]
    ) -> ModelSettings:
        with self.tx.write() as conn:
            # FOR UPDATE: PostgreSQL holds the row until the write (SQLite's BEGIN IMMEDIATE already
            # serializes writers; SQLAlchemy leaves the clause out there).
            row = conn.execute(sql.MODELS.where(t.models.c.name == name).with_for_update()).first()
            current = None if row is None else model_from(row)
            updated = change(current)
            if updated != current:
                write_model(conn, updated)
            return updated

    @retrying
    def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None:
        with self.tx.write() as conn:
            write_option(conn, kind, name, enabled=enabled, cost=cost)
