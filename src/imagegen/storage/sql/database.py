"""The SQL database, for SQLite and PostgreSQL: one synchronous class made of one part per concern.

Each part (credits.py, catalog.py, generations.py, jobs.py, keys.py, idempotency.py, outbox.py,
reports.py, schedule.py, audit.py) holds its methods and the SQL they run; this class adds what
concerns the database as a whole: opening it, migrating it, loading the initial data, transfers.
The adapter the service layer awaits (adapter.py, `SqlStorage`) runs these methods: on the event
loop, batched, pipelined or on a thread, as it decided when it was built.
Money is kept by the database itself: every credit move is a conditional UPDATE in the same
transaction as its ledger entry, and a unique index allows one deduction and one refund per request.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import insert, select

from imagegen.domain.catalog import Catalog
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.audit import SqlAudit
from imagegen.storage.sql.catalog import SqlCatalog, insert_catalog
from imagegen.storage.sql.credits import SqlCredits, insert_user
from imagegen.storage.sql.dialects import dialect_for
from imagegen.storage.sql.engines import create_sql_engine
from imagegen.storage.sql.errors import retrying
from imagegen.storage.sql.generations import SqlGenerations
from imagegen.storage.sql.group_commit import GroupCommit
from imagegen.storage.sql.idempotency import SqlIdempotency
from imagegen.storage.sql.jobs import SqlJobs
from imagegen.storage.sql.keys import SqlKeys
from imagegen.storage.sql.outbox import SqlOutbox
from imagegen.storage.sql.reports import SqlReports
from imagegen.storage.sql.schedule import SqlSchedule
from imagegen.storage.sql.slots import SqlSlots
from imagegen.storage.sql.transactions import Transactions
from imagegen.storage.sql.transfer import export_records, import_records

MIGRATIONS = Path(__file__).parent / "migrations"
INITIAL_DATA_MARKER = "initial_data_loaded"


class SqlDatabase(
    SqlCatalog,
    SqlCredits,
    SqlGenerations,
    SqlJobs,
    SqlKeys,
    SqlIdempotency,
    SqlOutbox,
    SqlReports,
    SqlSchedule,
    SqlSlots,
    SqlAudit,
):
    def __init__(self, url: str) -> None:
        self.engine = create_sql_engine(url)
        self.dialect = dialect_for(self.engine)
        self.tx = Transactions(self.engine)
        self.writes = GroupCommit(self.tx, self.dialect)

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.tx.write() as conn:
            self.dialect.lock_migrations(conn)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @retrying
    def load_initial_data(
        self,
        catalog: Catalog,
        users: dict[str, int],
        keys: list[tuple[str, str, str | None]],
        now: datetime,
    ) -> bool:
        with self.tx.write() as conn:
            marker = conn.execute(select(t.meta.c.value).where(t.meta.c.key == INITIAL_DATA_MARKER))
            if marker.first() is not None:
                return False
            insert_catalog(conn, catalog)
            for user_id, credits in users.items():
                # A fixed id: every instance's initial grant is the same entry, so an export of one
                # instance imported into another (which has its own initial data) adds it only once.
                insert_user(conn, user_id, credits, now, reason="initial data", entry_id=f"initial-{user_id}")
            for key_id, key_hash, key_user in keys:
                conn.execute(
                    insert(t.api_keys).values(id=key_id, key_hash=key_hash, user_id=key_user, created_at=now)
                )
            conn.execute(insert(t.meta).values(key=INITIAL_DATA_MARKER, value=now.isoformat()))
            return True

    @retrying
    def ping(self) -> None:
        with self.tx.read() as conn:
            conn.execute(sql.ONE)

    def close(self) -> None:
        self.writes.close()
        self.tx.close()
        self.engine.dispose()

    def export_records(self) -> Generator[dict[str, Any], None, None]:
        with self.tx.read() as conn:
            yield from export_records(conn)

    def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
        with self.tx.write() as conn:
            return import_records(conn, self.dialect, records, now)
