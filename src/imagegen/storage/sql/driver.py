"""Statements for the writer's hottest loop, run on the driver's cursor with SQLAlchemy's compiled SQL.

A debit runs three statements. Through `Connection.execute` each costs ~25 µs of Python on SQLite
(execution context, result wrapping, events) around ~4 µs in the driver, and the writer runs them
for every create of the process. `DriverStatement` keeps SQLAlchemy for what it does well, the SQL
text per dialect and each parameter's conversion (e.g. UTCDateTime to SQLite's timestamp text),
both worked out once per dialect, and only binds values and calls the DB-API cursor per execution.
Driver errors are wrapped as SQLAlchemy's would be, so callers catch the same IntegrityError and the
same SQLSTATEs are retried.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeEngine


def driver_connection(conn: Connection) -> Any:
    """The DB-API connection under `conn` (sqlite3's or psycopg's), checked out with it."""
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    return dbapi_connection


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: Sequence[str] | None  # parameter order for positional paramstyles (SQLite's qmark)
    defaults: dict[str, Any]  # values the statement carries itself (literals, constants)
    processors: dict[str, Callable[[Any], Any]]


class DriverStatement:
    def __init__(self, statement: Executable, column_keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, _Compiled] = {}

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Runs the statement in `conn`'s transaction; returns the DB-API cursor (rows, rowcount)."""
        dialect = conn.dialect
        text, bound = self.bind(dialect, params)
        cursor = driver_connection(conn).cursor()
        try:
            cursor.execute(text, bound)
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(text, bound, exc, dialect.loaded_dbapi.Error) from exc
        return cursor

    def bind(self, dialect: Dialect, params: Mapping[str, Any]) -> tuple[str, Any]:
        """The SQL text for `dialect` and the values its driver takes for `params`."""
        compiled = self._compiled.get(dialect.name) or self._compile(dialect)
        values = {**compiled.defaults, **params}
        for name, process in compiled.processors.items():
            values[name] = process(values[name])
        bound: Any = values if compiled.names is None else tuple(values[name] for name in compiled.names)
        return compiled.sql, bound

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self._statement.compile(dialect=dialect, column_keys=self._column_keys)  # type: ignore[attr-defined]
        binds = {name: compiled.binds[name] for name in set(compiled.bind_names.values())}
        result = _Compiled(
            sql=compiled.string,
            names=list(compiled.positiontup) if compiled.positional else None,
            defaults={name: bind.effective_value for name, bind in binds.items() if not bind.required},
            processors={
                name: process
                for name, bind in binds.items()
                if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
            },
        )
        self._compiled[dialect.name] = result
        return result


class RowsStatement:
    """A PostgreSQL statement that applies many rows in one execution: the rows go as one JSON
    array parameter, `rows`, which the statement turns back into typed columns (`jsonb_to_recordset`),
    each row with its ordinal `n` (from 1), which the statement returns for the rows it applied.

    One JSON text costs the client a few microseconds a row, where an array parameter per column
    cost ~25 µs a row (psycopg dumps array elements one by one, a regex for each string). `columns`
    gives each column's SQLAlchemy type, whose bind processing each value gets (as DriverStatement's
    parameters do); datetimes go as ISO 8601 text. With `key`, the parameter `keys` is the list of
    that column's values (see statements.DEBIT_ROWS). A single row runs `one` instead, the same
    statement with the row's columns as its parameters, which is cheaper to plan and run.
    """

    def __init__(
        self,
        many: Executable,
        one: Executable,
        columns: Mapping[str, TypeEngine[Any]],
        key: str | None = None,
    ) -> None:
        self._many = DriverStatement(many)
        self._one = DriverStatement(one)
        self._columns = dict(columns)
        self._key = key
        self._processors: dict[str, Callable[[Any], Any]] | None = None

    def bind(self, dialect: Dialect, rows: Sequence[Mapping[str, Any]]) -> tuple[str, Any]:
        keys = [row[self._key] for row in rows] if self._key is not None else None
        if len(rows) == 1:
            return self._one.bind(dialect, {**rows[0], "keys": keys})
        if self._processors is None:
            self._processors = {
                name: process
                for name, kind in self._columns.items()
                if (process := kind.dialect_impl(dialect).bind_processor(dialect)) is not None
            }
        processors = self._processors
        numbered = [
            {**row, **{name: process(row[name]) for name, process in processors.items()}, "n": n}
            for n, row in enumerate(rows, start=1)
        ]
        return self._many.bind(dialect, {"rows": json.dumps(numbered, default=_json_scalar), "keys": keys})


def _json_scalar(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a JSON value")
