"""PostgreSQL's ways, where they differ from SQLite's (dialects.Dialect): a round trip per statement,
so single statements where possible, and NOTIFY to wake other processes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, Connection, Engine, Integer, Table, cast, func, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import Insert

from imagegen.domain.generation import GenerationRequest, NewGeneration
from imagegen.storage.sql import statements as sql
from imagegen.storage.sql.calls import QueuedCall
from imagegen.storage.sql.dialects import Dialect, debit_alone, debited
from imagegen.storage.sql.loop_pipeline import LoopPipeline
from imagegen.storage.sql.rows import request_from
from imagegen.storage.sql.transactions import Transactions

log = logging.getLogger("imagegen.storage")
LISTEN_APPLICATION_NAME = "imagegen-listen"  # how its connection shows in pg_stat_activity
MIGRATION_LOCK = 7236451  # an advisory lock id: one process migrates, the others wait for it


class Postgres(Dialect):
    name = "postgresql"

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))

    def notify(self, conn: Connection, channel: str, payload: str = "") -> None:
        sql.NOTIFY.execute(conn, {"p_channel": channel, "p_payload": payload})

    async def listen(
        self, engine: Engine, on_job: Callable[[], None], on_done: Callable[[str], None]
    ) -> None:
        # On the event loop, over an async connection: waiting for a notification is waiting on a
        # socket, which needs no thread of its own.
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                connecting = psycopg.AsyncConnection.connect(
                    url, autocommit=True, application_name=LISTEN_APPLICATION_NAME
                )
                async with await connecting as conn:
                    await conn.execute(f"LISTEN {sql.JOBS_CHANNEL}")
                    await conn.execute(f"LISTEN {sql.DONE_CHANNEL}")
                    on_job()  # anything queued while we were not listening
                    async for note in conn.notifies():
                        if note.channel == sql.JOBS_CHANNEL:
                            on_job()
                        else:
                            on_done(note.payload)
            except psycopg.Error:
                log.warning("lost the LISTEN connection; reconnecting", exc_info=True)
            await asyncio.sleep(1.0)

    def loop_pipeline(
        self, engine: Engine, hand_over: Callable[[list[QueuedCall[Any]]], None], max_batch: int
    ) -> LoopPipeline:
        return LoopPipeline(engine, hand_over, max_batch)

    def debit(
        self, conn: Connection, new: NewGeneration, values: dict[str, Any]
    ) -> tuple[GenerationRequest, bool]:
        # Each statement is a round trip here: the whole debit is one (DEBIT_IN_ONE).
        return debited(conn, new, values, debit_alone(conn, new, values))

    def claim_job(self, tx: Transactions, params: dict[str, Any], now: datetime) -> GenerationRequest | None:
        # Most jobs have no webhook: one statement claims the oldest, in one round trip instead of
        # three. If the oldest has one, the transaction claims it (or a later job, if another worker
        # was quicker) and writes its "start" delivery.
        with tx.statement() as conn:
            found = conn.execute(sql.CLAIM_QUIETLY["p_models" in params], params).first()
        if found is None:
            return None  # nothing pending
        if found.id is not None:
            return request_from(found)
        return super().claim_job(tx, params, now)

    def complete(self, tx: Transactions, params: dict[str, Any], now: datetime) -> bool:
        # Most jobs have no webhook: one statement does all of it, in one round trip instead of five.
        # It leaves a job with a webhook (and one that is not this worker's) to the transaction,
        # which finds out which.
        with tx.statement() as conn:
            if conn.execute(sql.COMPLETE_QUIETLY, params).first() is not None:
                return True
        return super().complete(tx, params, now)

    def bucket_of(self, start: Any, end: Any, bucket_ms: int) -> ColumnElement[int]:
        millis = func.extract("epoch", end - start) * 1000
        return cast(func.floor(millis / bucket_ms), Integer)

    def insert_new(self, table: Table) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
