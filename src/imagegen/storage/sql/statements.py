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
    Select,
    Text,
    Update,
    any_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql

from imagegen.domain.generation import Move
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.driver import DriverStatement, RowsStatement

gr = t.generation_requests
users = t.users

# PostgreSQL NOTIFY channels (SQLite processes poll instead).
JOBS_CHANNEL = "imagegen_jobs"  # a job was queued: idle workers look
DONE_CHANNEL = "imagegen_done"  # a job ended (payload: its id): waiting HTTP handlers look


# -- credits: one conditional UPDATE moves a balance (and the in-flight count) or moves nothing ----
def covers(delta: Any) -> ColumnElement[bool]:
    """The balance can take `delta`: it stays at 0 or above (invariant 1)."""
    return users.c.credits + delta >= 0


def under_limit(max_in_flight: Any) -> ColumnElement[bool]:
    """The user has fewer than `max_in_flight` generations queued or running."""
    return users.c.in_flight < max_in_flight


_user = users.c.id == bindparam("p_user")
_credit_values = {
    "credits": users.c.credits + bindparam("p_delta"),
    "in_flight": users.c.in_flight + bindparam("p_in_flight"),
}
MOVE_CREDITS = (
    update(users).where(_user, covers(bindparam("p_delta"))).values(_credit_values).returning(users.c.credits)
)
MOVE_CREDITS_LIMITED = (
    update(users)
    .where(_user, covers(bindparam("p_delta")), under_limit(bindparam("p_max_in_flight")))
    .values(_credit_values)
    .returning(users.c.credits)
)
# What a debit runs for every create: straight on the driver (see driver.py).
MOVE_CREDITS_FAST = DriverStatement(MOVE_CREDITS)
MOVE_CREDITS_LIMITED_FAST = DriverStatement(MOVE_CREDITS_LIMITED)
# Why a conditional UPDATE moved nothing, read with the row locked (SQLite's writer holds the whole
# database already): the state a retried UPDATE would see too.
USER_STATE = (
    select(users.c.credits, users.c.in_flight).where(users.c.id == bindparam("p_user")).with_for_update()
)
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


def may(move: Move) -> ColumnElement[bool]:
    """The request is in a status `move` may start from (the statuses in the SQL text, as status_is)."""
    sources = sorted(status.value for status in move.sources)
    if len(sources) == 1:
        return status_is(sources[0])
    return gr.c.status.in_([literal_column(f"'{value}'", gr.c.status.type) for value in sources])


# The oldest pending job (of the models in p_models, for a worker serving only some), locked,
# skipping those another worker has locked.
def _oldest_pending(of_models: bool) -> Select[Any]:
    query = select(gr.c.id).where(may(Move.CLAIM))
    if of_models:
        query = query.where(gr.c.model.in_(bindparam("p_models", expanding=True)))
    return query.order_by(gr.c.created_at).limit(1).with_for_update(skip_locked=True)


_claimed_values: dict[str, Any] = {
    "status": Move.CLAIM.target.value,
    "lease_owner": bindparam("p_worker"),
    "lease_expires_at": bindparam("p_lease_until", type_=t.UTCDateTime()),
    "attempts": gr.c.attempts + 1,
    "started_at": func.coalesce(gr.c.started_at, bindparam("p_now", type_=t.UTCDateTime())),
}


def _claim_job(of_models: bool) -> Update:
    oldest = _oldest_pending(of_models).scalar_subquery()
    return update(gr).where(gr.c.id == oldest, may(Move.CLAIM)).values(_claimed_values).returning(*gr.c)


# CLAIM_JOB[of_models]: claims the oldest pending job (of p_models, if of_models).
CLAIM_JOB = {False: _claim_job(False), True: _claim_job(True)}
# A request created for its creator to run (a claimed create): started in the debit's transaction.
CLAIM_CREATED = (
    update(gr).where(gr.c.id == bindparam("p_id"), may(Move.CLAIM)).values(_claimed_values).returning(*gr.c)
)


# PostgreSQL: the claim as one statement outside any transaction, for the oldest pending job if it
# has no webhook (whose "start" delivery is written beside the claim, in Python). No row: nothing is
# pending; a row without an id (only `oldest_id`): the oldest has a webhook, for CLAIM_JOB to take.
def _claim_quietly(of_models: bool) -> Select[Any]:
    oldest = _oldest_pending(of_models).add_columns(gr.c.webhook).cte("oldest")
    claimed = (
        update(gr)
        .where(gr.c.id == oldest.c.id, may(Move.CLAIM), oldest.c.webhook.is_(None))
        .values(_claimed_values)
        .returning(*gr.c)
        .cte("claimed")
    )
    return select(oldest.c.id.label("oldest_id"), *claimed.c).select_from(oldest.outerjoin(claimed, true()))


CLAIM_QUIETLY = {False: _claim_quietly(False), True: _claim_quietly(True)}
_completed_conditions = (
    gr.c.id == bindparam("p_id"),
    may(Move.COMPLETE),
    gr.c.lease_owner == bindparam("p_worker"),
)
_completed_values: dict[str, Any] = {
    "status": Move.COMPLETE.target.value,
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

# -- the configuration version: changed with the catalog and the keys, checked by cached creates ----
CONFIG_VERSION_KEY = "config_version"
CONFIG_VERSION = select(t.meta.c.value).where(t.meta.c.key == CONFIG_VERSION_KEY)
CONFIG_VERSION_FAST = DriverStatement(CONFIG_VERSION)
SET_CONFIG_VERSION = (
    update(t.meta).where(t.meta.c.key == CONFIG_VERSION_KEY).values(value=bindparam("p_version"))
)

# -- PostgreSQL: a create's whole debit in one statement, for one create or for a batch --------------
# The UPDATE's RETURNING feeds both INSERTs: when it moves no balance, nothing is inserted either. It
# also checks the configuration version the create was priced under (`p_config`; NULL skips the
# check: a stale row moves nothing, like a row short of credits) and, if it debited anything, wakes
# the job workers (NOTIFY, delivered at commit). A batch's creates are the rows of one JSON array
# parameter (see driver.RowsStatement): one execution, its own transaction on an autocommit
# connection. A user may appear once per execution: the UPDATE joins each user's row to one input
# row only (the loop runs a user's further creates in later executions). `keys` lists the users:
# the planner cannot tell how many rows the JSON holds, and looks each user up by `id = ANY(keys)`
# instead of reading the whole table into a hash join. The statement returns the `n` of each row
# it applied.
DEBIT_COLUMNS: dict[str, Any] = {
    "p_user": users.c.id.type,
    "p_delta": BigInteger(),
    "p_max_in_flight": BigInteger(),
    "p_config": t.meta.c.value.type,
    "e_id": t.ledger.c.id.type,
    **{f"r_{name}": gr.c[name].type for name in REQUEST_COLUMNS},
}


def _debit(input_: Any) -> Select[Any]:
    """The debit of every row of `input_` (a CTE with DEBIT_COLUMNS and each row's `n`)."""
    version = func.coalesce(CONFIG_VERSION.scalar_subquery(), "")
    debited = (
        update(users)
        .where(
            users.c.id == any_(bindparam("keys", type_=postgresql.ARRAY(users.c.id.type))),
            users.c.id == input_.c.p_user,
            covers(input_.c.p_delta),
            under_limit(input_.c.p_max_in_flight),
            or_(input_.c.p_config.is_(None), input_.c.p_config == version),
        )
        .values(credits=users.c.credits + input_.c.p_delta, in_flight=users.c.in_flight + 1)
        .returning(input_.c.n, users.c.credits)
        .cte("debited")
    )
    applied = input_.join(debited, debited.c.n == input_.c.n)
    request = {name: input_.c[f"r_{name}"] for name in REQUEST_COLUMNS}
    entry = {
        "id": input_.c.e_id,
        "user_id": input_.c.p_user,
        "type": literal("deduction"),
        "delta": input_.c.p_delta,
        "balance_after": debited.c.credits,
        "generation_request_id": input_.c.r_id,
        "created_at": input_.c.r_created_at,
    }
    inserts = (
        insert(gr).from_select(list(request), select(*request.values()).select_from(applied)).cte("request"),
        insert(t.ledger).from_select(list(entry), select(*entry.values()).select_from(applied)).cte("entry"),
    )
    any_debit = select(literal(1)).select_from(debited).limit(1).subquery("any_debit")
    woken = select(func.pg_notify(JOBS_CHANNEL, "")).select_from(any_debit).cte("woken")
    return select(debited.c.n).select_from(debited.outerjoin(woken, true())).add_cte(*inserts)


_one_row = select(
    *(bindparam(name, type_=kind).label(name) for name, kind in DEBIT_COLUMNS.items()),
    literal(1, BigInteger()).label("n"),
).cte("input")
_json_rows = (
    func.jsonb_to_recordset(cast(bindparam("rows", type_=Text()), postgresql.JSONB))
    .table_valued(*(column(name, kind) for name, kind in {**DEBIT_COLUMNS, "n": BigInteger()}.items()))
    .render_derived(name="rows", with_types=True)
)
DEBIT_ONE = _debit(_one_row)
DEBIT_MANY = _debit(select(_json_rows).cte("input"))
DEBIT_IN_ONE = DriverStatement(DEBIT_ONE)  # the writer thread's debit of one create
DEBIT_ROWS = RowsStatement(DEBIT_MANY, DEBIT_ONE, DEBIT_COLUMNS, key="p_user")  # the event loop's


# -- catalog ---------------------------------------------------------------------------------------
MODELS = select(t.models)
ENABLED_STYLES = select(t.styles.c.name).where(t.styles.c.enabled)
ENABLED_COLORS = select(t.colors.c.name).where(t.colors.c.enabled)
ENABLED_SIZES = select(t.sizes.c.name, t.sizes.c.cost).where(t.sizes.c.enabled)

# -- PostgreSQL NOTIFY (delivered at commit) --------------------------------------------------------
NOTIFY = DriverStatement(select(func.pg_notify(bindparam("p_channel"), bindparam("p_payload"))))
ONE = select(literal(1))
