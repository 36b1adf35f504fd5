"""Bulk export and import of models, users, requests, ledger entries and reports, in one transaction.

Records are the service layer's normalized dicts (snake_case, aware datetimes, a `collection` key).
Import is idempotent by id, creates referenced-but-missing users with 0 credits, and keeps invariant 1
for the users it creates: where the imported ledger does not add up to the imported balance, it writes
one adjustment ("import: opening balance"). For users that already existed, imported entries move
their balance; an import that would take a balance below 0 is refused whole.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from imagegen.domain.catalog import model_from_record, model_record
from imagegen.domain.errors import InvalidInput
from imagegen.domain.generation import Status
from imagegen.domain.ids import new_id
from imagegen.domain.ledger import EntryType
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.catalog import read_model, write_model
from imagegen.storage.sql.dialects import Dialect
from imagegen.storage.sql.rows import model_from

BATCH = 1000
COLLECTIONS = ("users", "generationRequests", "transactions", "reports", "models")


def export_records(conn: Connection) -> Iterator[dict[str, Any]]:
    for row in conn.execute(sql.MODELS.order_by(t.models.c.name)).all():  # a few: read whole
        yield model_record(model_from(row))
    streaming = conn.execution_options(yield_per=BATCH)
    for row in streaming.execute(select(t.users).order_by(t.users.c.id)):
        yield {
            "collection": "users",
            "id": row.id,
            "credits": row.credits,
            "created_at": row.created_at,
        }
    gr = t.generation_requests
    for row in streaming.execute(select(gr).order_by(gr.c.created_at, gr.c.id)):
        yield {"collection": "generationRequests", **{c: getattr(row, c) for c in REQUEST_FIELDS}}
    for row in streaming.execute(select(t.ledger).order_by(t.ledger.c.seq)):
        yield {"collection": "transactions", **{c: getattr(row, c) for c in ENTRY_FIELDS}}
    for row in streaming.execute(select(t.reports).order_by(t.reports.c.period_start, t.reports.c.id)):
        yield {"collection": "reports", "id": row.id, "document": row.document}


REQUEST_FIELDS = (
    "id",
    "user_id",
    "model",
    "style",
    "color",
    "size",
    "prompt",
    "cost",
    "status",
    "image_url",
    "error",
    "created_at",
    "started_at",
    "completed_at",
)
ENTRY_FIELDS = (
    "id",
    "user_id",
    "type",
    "delta",
    "balance_after",
    "generation_request_id",
    "reason",
    "created_at",
)


def import_records(
    conn: Connection, dialect: Dialect, records: Iterable[dict[str, Any]], now: datetime
) -> dict[str, int]:
    run = _Import(conn, dialect, now)
    iterator = iter(records)
    while batch := list(islice(iterator, BATCH)):
        run.batch(batch)
    run.settle_balances()
    run.settle_unfinished()
    return run.counts


class _Import:
    def __init__(self, conn: Connection, dialect: Dialect, now: datetime) -> None:
        self.conn = conn
        self.dialect = dialect
        self.now = now
        self.counts = {name: 0 for name in COLLECTIONS} | {"usersCreatedAsReferenced": 0}
        self.targets: dict[str, int] = {}  # users created by this import -> the balance they end with
        self.moved: defaultdict[str, int] = defaultdict(int)  # pre-existing users -> imported deltas
        self.unfinished: set[str] = set()  # imported pending or running requests

    def batch(self, records: list[dict[str, Any]]) -> None:
        by_collection: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            by_collection[record["collection"]].append(record)
        self._users(by_collection["users"])
        referenced = {
            r["user_id"] for name in ("generationRequests", "transactions") for r in by_collection[name]
        }
        self._ensure_users(referenced)
        self._requests(by_collection["generationRequests"])
        self._entries(by_collection["transactions"])
        self._reports(by_collection["reports"])
        self._models(by_collection["models"])

    def _models(self, records: list[dict[str, Any]]) -> None:
        """A models line replaces the stored model (a binding and prices must survive a move)."""
        for record in records:
            model = model_from_record(record)
            if read_model(self.conn, model.name) != model:
                write_model(self.conn, model)
                self.counts["models"] += 1

    def _existing(self, user_ids: set[str]) -> set[str]:
        if not user_ids:
            return set()
        query = select(t.users.c.id).where(t.users.c.id.in_(user_ids))
        return set(self.conn.execute(query).scalars())

    def _users(self, records: list[dict[str, Any]]) -> None:
        existing = self._existing({r["id"] for r in records})
        for record in records:
            user_id = record["id"]
            if user_id in self.targets:  # created earlier in this import, perhaps as a reference
                self.targets[user_id] = record["credits"]
            elif user_id not in existing:
                self._create_user(user_id, record.get("created_at") or self.now)
                self.targets[user_id] = record["credits"]
                self.counts["users"] += 1

    def _ensure_users(self, user_ids: set[str]) -> None:
        for user_id in sorted(user_ids - self._existing(user_ids) - set(self.targets)):
            self._create_user(user_id, self.now)
            self.targets[user_id] = 0
            self.counts["usersCreatedAsReferenced"] += 1

    def _create_user(self, user_id: str, created_at: datetime) -> None:
        self.conn.execute(insert(t.users).values(id=user_id, credits=0, created_at=created_at))

    def _requests(self, records: list[dict[str, Any]]) -> None:
        rows = [{c: r.get(c) for c in REQUEST_FIELDS} | {"attempts": 0, "source": "import"} for r in records]
        inserted = {row.id for row in self._insert_new(t.generation_requests, rows)}
        live = (Status.PENDING.value, Status.RUNNING.value)
        self.unfinished |= {str(row["id"]) for row in rows if row["id"] in inserted and row["status"] in live}
        self.counts["generationRequests"] += len(inserted)

    def _entries(self, records: list[dict[str, Any]]) -> None:
        rows = [{c: r.get(c) for c in ENTRY_FIELDS} for r in records]
        inserted = self._insert_new(t.ledger, rows, returning=True)
        for row in inserted:
            if row.user_id not in self.targets:
                self.moved[row.user_id] += row.delta
        self.counts["transactions"] += len(inserted)

    def _reports(self, records: list[dict[str, Any]]) -> None:
        rows = [
            {
                "id": r["id"],
                "document": r["document"],
                "period_start": r["period_start"],
                "period_end": r["period_end"],
                "generated_at": r.get("generated_at") or self.now,
            }
            for r in records
        ]
        self.counts["reports"] += len(self._insert_new(t.reports, rows))

    def _insert_new(self, table: Table, rows: list[dict[str, Any]], returning: bool = False) -> list[Any]:
        """Inserts the rows whose id is new; returns the inserted rows (or their ids)."""
        if not rows:
            return []
        stmt = self.dialect.insert_new(table)
        columns = (table.c.id, table.c.user_id, table.c.delta) if returning else (table.c.id,)
        try:
            return list(self.conn.execute(stmt.returning(*columns), rows).all())
        except IntegrityError as exc:  # a foreign key or check constraint: the file's fault
            raise InvalidInput(f"import refused: {str(exc.orig).splitlines()[0]}") from exc

    def settle_balances(self) -> None:
        for user_id, target in self.targets.items():
            ledger_sum = self._ledger_sum(user_id)
            if ledger_sum != target:
                self._append_adjustment(user_id, target - ledger_sum, target)
            self.conn.execute(update(t.users).where(t.users.c.id == user_id).values(credits=target))
        users = t.users
        for user_id, delta in self.moved.items():
            moved = self.conn.execute(
                update(users)
                .where(users.c.id == user_id, users.c.credits + delta >= 0)
                .values(credits=users.c.credits + delta)
            )
            if moved.rowcount != 1:
                raise InvalidInput(f"import refused: its entries would take user {user_id} below 0 credits")

    def settle_unfinished(self) -> None:
        """Imported pending or running requests: queued again if they were debited, else closed.

        A request that was running when it was exported has no live worker here; one that was
        never debited must not become a job whose failure would refund credits nobody paid.
        """
        gr = t.generation_requests
        for request_id in sorted(self.unfinished):
            debited = self.conn.execute(
                select(t.ledger.c.id).where(
                    t.ledger.c.generation_request_id == request_id,
                    t.ledger.c.type == EntryType.DEDUCTION.value,
                )
            ).first()
            values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
            if debited:
                values |= {"status": Status.PENDING.value}
                user_id = self.conn.execute(select(gr.c.user_id).where(gr.c.id == request_id)).scalar_one()
                self.conn.execute(
                    update(t.users).where(t.users.c.id == user_id).values(in_flight=t.users.c.in_flight + 1)
                )
            else:
                values |= {
                    "status": Status.FAILED.value,
                    "error": "imported unfinished without a deduction: not run",
                    "completed_at": self.now,
                }
            self.conn.execute(update(gr).where(gr.c.id == request_id).values(values))

    def _ledger_sum(self, user_id: str) -> int:
        query = select(func.coalesce(func.sum(t.ledger.c.delta), 0)).where(t.ledger.c.user_id == user_id)
        return int(self.conn.execute(query).scalar_one())

    def _append_adjustment(self, user_id: str, delta: int, balance_after: int) -> None:
        self.conn.execute(
            insert(t.ledger).values(
                id=new_id(),
                user_id=user_id,
                type=EntryType.ADJUSTMENT.value,
                delta=delta,
                balance_after=balance_after,
                generation_request_id=None,
                reason="import: opening balance",
                created_at=self.now,
            )
        )
