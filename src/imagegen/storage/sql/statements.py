"""The statements on the hot paths (create, claim, complete, refund, key lookup, ledger pages), built once.

Building a SQLAlchemy statement costs far more than running it: on SQLite a debit built per call
took ~160 µs for its UPDATE alone, the same UPDATE prebuilt with bind parameters ~24 µs. So the
statements every request runs are module constants here, and the adapter only binds values.
Bind parameter names start with `p_`: SQLAlchemy reserves column names for the SET and VALUES clauses.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql

from imagegen.domain.generation import Status
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.driver import DriverStatement, RowsStatement

gr = t.generation_requests
users = t.users
PENDING, RUNNING = Status.PENDING.value, Status.RUNNING.value

# PostgreSQL NOTIFY channels (SQLite processes poll instead).
JOBS_CHANNEL = "imagegen_jobs"  # a job was queued: idle workers look
DONE_CHANNEL = "imagegen_done"  # a job ended (payload: its id): waiting HTTP handlers look

# -- credits: one conditional UPDATE moves a balance (and the in-flight count) or moves nothing ----
_credit_conditions = (users.c.id == bindparam("p_user"), users.c.credits + bindparam("p_delta") >= 0)
_credit_values = {
    "credits": users.c.credits + bindparam("p_delta"),
    "in_flight": users.c.in_flight + bindparam("p_in_flight"),
}
MOVE_CREDITS = update(users).where(*_credit_conditions).values(_credit_values).returning(users.c.credits)
MOVE_CREDITS_LIMITED = (
    update(users)
    .where(*_credit_conditions, users.c.in_flight < bindparam("p_max_in_flight"))
    .values(_credit_values)
    .returning(users.c.credits)
)
# What a debit runs for every create: straight on the driver (see driver.py).
MOVE_CREDITS_FAST = DriverStatement(MOVE_CREDITS)
MOVE_CREDITS_LIMITED_FAST = DriverStatement(MOVE_CREDITS_LIMITED)
USER_STATE = select(users.c.credits, users.c.in_flight).where(users.c.id == bindparam("p_user"))
GET_USER = select(users).where(users.c.id == bindparam("p_user"))
LOCK_USER = select(users.c.id).where(users.c.id == bindparam("p_user")).with_for_update()
LEAVE_IN_FLIGHT = (
    update(users).where(users.c.id == bindparam("p_user")).values(in_flight=users.c.in_flight - 1)
)

# -- ledger ----------------------------------------------------------------------------------------
INSERT_ENTRY = insert(t.ledger)
ENTRY_COLUMNS = (
    "id",
    "user_id",
    "type",
    "delta",
    "balance_after",
    "generation_request_id",
    "reason",
    "created_at",
    "idempotency_key",
)
INSERT_ENTRY_FAST = DriverStatement(INSERT_ENTRY, ENTRY_COLUMNS)
LEDGER_PAGE = (
    select(t.ledger)
    .where(t.ledger.c.user_id == bindparam("p_user"))
    .order_by(t.ledger.c.seq.desc())
    .limit(bindparam("p_limit"))
)
LEDGER_PAGE_AFTER = (
    select(t.ledger)
    .where(t.ledger.c.user_id == bindparam("p_user"), t.ledger.c.seq < bindparam("p_seq"))
    .order_by(t.ledger.c.seq.desc())
    .limit(bindparam("p_limit"))
)
LEDGER_TOTALS = (
    select(t.ledger.c.type, func.sum(t.ledger.c.delta))
    .where(t.ledger.c.user_id == bindparam("p_user"))
    .group_by(t.ledger.c.type)
)

# -- generation requests and jobs ------------------------------------------------------------------
INSERT_REQUEST = insert(gr)
REQUEST_COLUMNS = (
    "id",
    "user_id",
    "model",
    "style",
    "color",
    "size",
    "prompt",
    "cost",
    "status",
    "attempts",
    "idempotency_key",
    "fingerprint",
    "created_at",
    "webhook",
    "webhook_events",
)
INSERT_REQUEST_FAST = DriverStatement(INSERT_REQUEST, REQUEST_COLUMNS)
GET_REQUEST = select(gr).where(gr.c.id == bindparam("p_id"))
BY_IDEMPOTENCY_KEY = select(gr).where(
    gr.c.user_id == bindparam("p_user"), gr.c.idempotency_key == bindparam("p_key")
)


def status_is(value: str) -> ColumnElement[bool]:
    """`status = 'value'` with the value in the SQL text, not a parameter: the partial indexes on
    pending and on running requests then serve the query in PostgreSQL's generic plans too. psycopg
    prepares a statement after 5 executions; a generic plan cannot tell that `status = $1` matches
    an index's `status = 'pending'`, and the job claim, polled by every idle worker thread, walked
    every request ever made by creation time (with 10,000s of them, a busy core)."""
    return gr.c.status == literal_column(f"'{value}'", gr.c.status.type)


# The oldest pending job, locked, skipping those another worker has locked.
_oldest_pending_query = (
    select(gr.c.id)
    .where(status_is(PENDING))
    .order_by(gr.c.created_at)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_claimed_values: dict[str, Any] = {
    "status": RUNNING,
    "lease_owner": bindparam("p_worker"),
    "lease_expires_at": bindparam("p_lease_until", type_=t.UTCDateTime()),
    "attempts": gr.c.attempts + 1,
    "started_at": func.coalesce(gr.c.started_at, bindparam("p_now", type_=t.UTCDateTime())),
}
CLAIM_JOB = (
    update(gr)
    .where(gr.c.id == _oldest_pending_query.scalar_subquery(), gr.c.status == PENDING)
    .values(_claimed_values)
    .returning(*gr.c)
)
# PostgreSQL: the claim as one statement outside any transaction, for the oldest pending job if it
# has no webhook (whose "start" delivery is written beside the claim, in Python). No row: nothing is
# pending; a row without an id (only `oldest_id`): the oldest has a webhook, for CLAIM_JOB to take.
_oldest = _oldest_pending_query.add_columns(gr.c.webhook).cte("oldest")
_claimed = (
    update(gr)
    .where(gr.c.id == _oldest.c.id, gr.c.status == PENDING, _oldest.c.webhook.is_(None))
    .values(_claimed_values)
    .returning(*gr.c)
    .cte("claimed")
)
CLAIM_QUIETLY = select(_oldest.c.id.label("oldest_id"), *_claimed.c).select_from(
    _oldest.outerjoin(_claimed, true())
)
_completed_conditions = (
    gr.c.id == bindparam("p_id"),
    gr.c.status == RUNNING,
    gr.c.lease_owner == bindparam("p_worker"),
)
_completed_values: dict[str, Any] = {
    "status": Status.COMPLETED.value,
    "image_url": bindparam("p_image_url"),
    "completed_at": bindparam("p_now", type_=t.UTCDateTime()),
    "lease_owner": None,
    "lease_expires_at": None,
}
COMPLETE_JOB = update(gr).where(*_completed_conditions).values(_completed_values).returning(*gr.c)
# PostgreSQL: COMPLETE_JOB, LEAVE_IN_FLIGHT and the NOTIFY in one statement, for a job without a
# webhook (whose delivery is written beside it, in Python). No row: not completed by it.
_done = (
    update(gr)
    .where(*_completed_conditions, gr.c.webhook.is_(None))
    .values(_completed_values)
    .returning(gr.c.user_id)
    .cte("done")
)
_left_flight = (
    update(users)
    .where(users.c.id == _done.c.user_id)
    .values(in_flight=users.c.in_flight - 1)
    .cte("left_flight")
)
COMPLETE_QUIETLY = (
    select(func.pg_notify(DONE_CHANNEL, bindparam("p_id"))).select_from(_done).add_cte(_left_flight)
)

# -- API keys --------------------------------------------------------------------------------------
FIND_API_KEY = select(t.api_keys).where(
    t.api_keys.c.key_hash == bindparam("p_hash"), t.api_keys.c.revoked_at.is_(None)
)

# -- PostgreSQL: a whole debit in one statement (one round trip instead of three) -------------------
# The UPDATE's RETURNING feeds both INSERTs: when it moves no balance, nothing is inserted either.
_debited = (
    update(users)
    .where(
        users.c.id == bindparam("p_user"),
        users.c.credits + bindparam("p_delta") >= 0,
        users.c.in_flight < bindparam("p_max_in_flight"),
    )
    .values(credits=users.c.credits + bindparam("p_delta"), in_flight=users.c.in_flight + 1)
    .returning(users.c.credits)
    .cte("debited")
)
_REQUEST_VALUES = {name: bindparam(f"r_{name}", type_=gr.c[name].type) for name in REQUEST_COLUMNS}
_ENTRY_VALUES = {
    "id": bindparam("e_id", type_=t.ledger.c.id.type),
    "user_id": bindparam("r_user_id", type_=t.ledger.c.user_id.type),
    "type": literal("deduction"),
    "delta": bindparam("p_delta", type_=t.ledger.c.delta.type),
    "balance_after": _debited.c.credits,
    "generation_request_id": bindparam("r_id", type_=t.ledger.c.generation_request_id.type),
    "reason": literal(None, type_=t.ledger.c.reason.type),
    "created_at": bindparam("r_created_at", type_=t.UTCDateTime()),
    "idempotency_key": literal(None, type_=t.ledger.c.idempotency_key.type),
}
_insert_request = insert(gr).from_select(
    list(_REQUEST_VALUES), select(*_REQUEST_VALUES.values()).select_from(_debited)
)
_insert_entry = insert(t.ledger).from_select(
    list(_ENTRY_VALUES), select(*_ENTRY_VALUES.values()).select_from(_debited)
)
DEBIT_IN_ONE = DriverStatement(
    select(_debited.c.credits).add_cte(_insert_request.cte("request"), _insert_entry.cte("entry"))
)

# -- PostgreSQL: DEBIT_IN_ONE for a whole batch (the event loop's; see loop_pipeline.py) -------------
# The same debit, request and ledger entry for many creates in one execution, with the same
# parameters, as the rows of one JSON array (see RowsStatement), and everything else the batch's
# transaction needs, so that a batch of distinct users is one statement in one round trip, its own
# transaction. A user may appear once per execution: the UPDATE joins each user's row to one input
# row only (the loop runs a user's further creates in later ones). A row whose `p_config` is not
# the stored configuration version (the catalog and keys it was priced with are stale) moves
# nothing, like a row short of credits; NULL skips that check. The first applied row wakes the job
# workers (NOTIFY, delivered at commit).
CONFIG_VERSION_KEY = "config_version"

_DEBIT_COLUMNS: dict[str, Any] = {
    "p_user": users.c.id.type,
    "p_delta": BigInteger(),
    "p_max_in_flight": BigInteger(),
    "p_config": t.meta.c.value.type,
    "e_id": t.ledger.c.id.type,
    **{f"r_{name}": gr.c[name].type for name in REQUEST_COLUMNS},
}


def _debit_on_loop_sql(*, one: bool) -> str:
    pg = postgresql.dialect()
    types = {name: kind.compile(dialect=pg) for name, kind in _DEBIT_COLUMNS.items()}
    if one:  # the row's columns are the parameters
        columns = ", ".join(f"%({name})s::{kind} AS {name}" for name, kind in types.items())
        rows = f"SELECT {columns}, 1 AS n"
    else:
        typed = ", ".join(f"{name} {kind}" for name, kind in types.items())
        rows = f"""SELECT * FROM ROWS FROM (jsonb_to_recordset(%(rows)s::jsonb) AS ({typed}))
        WITH ORDINALITY AS input({", ".join(types)}, n)"""
    u, meta = users.name, t.meta.name
    requests = ", ".join(REQUEST_COLUMNS)
    request_values = ", ".join(f"input.r_{name}" for name in REQUEST_COLUMNS)
    return f"""
WITH input AS (
    {rows}
), debited AS (
    UPDATE {u} SET credits = {u}.credits + input.p_delta, in_flight = {u}.in_flight + 1
    FROM input
    WHERE {u}.id = ANY(%(keys)s) AND {u}.id = input.p_user
        AND {u}.credits + input.p_delta >= 0
        AND {u}.in_flight < input.p_max_in_flight
        AND (input.p_config IS NULL OR input.p_config = coalesce(
            (SELECT value FROM {meta} WHERE key = '{CONFIG_VERSION_KEY}'), ''))
    RETURNING input.n, {u}.credits
), request AS (
    INSERT INTO {gr.name} ({requests})
    SELECT {request_values} FROM input JOIN debited ON debited.n = input.n
), entry AS (
    INSERT INTO {t.ledger.name} (id, user_id, type, delta, balance_after, generation_request_id, created_at)
    SELECT input.e_id, input.p_user, 'deduction', input.p_delta, debited.credits, input.r_id,
        input.r_created_at
    FROM input JOIN debited ON debited.n = input.n
), woken AS (
    SELECT pg_notify('{JOBS_CHANNEL}', '') FROM (SELECT FROM debited LIMIT 1) AS any_debit
)
SELECT n FROM debited LEFT JOIN woken ON true"""


DEBIT_ROWS = RowsStatement(
    _debit_on_loop_sql(one=False), _debit_on_loop_sql(one=True), _DEBIT_COLUMNS, key="p_user"
)


# -- the configuration version: changed with the catalog and the keys, checked by cached creates ----
CONFIG_VERSION = select(t.meta.c.value).where(t.meta.c.key == CONFIG_VERSION_KEY)
CONFIG_VERSION_FAST = DriverStatement(CONFIG_VERSION)
SET_CONFIG_VERSION = (
    update(t.meta).where(t.meta.c.key == CONFIG_VERSION_KEY).values(value=bindparam("p_version"))
)

# -- catalog ---------------------------------------------------------------------------------------
MODELS = select(t.models)
ENABLED_STYLES = select(t.styles.c.name).where(t.styles.c.enabled)
ENABLED_COLORS = select(t.colors.c.name).where(t.colors.c.enabled)
ENABLED_SIZES = select(t.sizes.c.name, t.sizes.c.cost).where(t.sizes.c.enabled)

# -- PostgreSQL NOTIFY (delivered at commit) --------------------------------------------------------
NOTIFY = DriverStatement(select(func.pg_notify(bindparam("p_channel"), bindparam("p_payload"))))
ONE = select(literal(1))
