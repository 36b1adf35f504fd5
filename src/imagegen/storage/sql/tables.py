"""The SQL schema (SQLAlchemy Core). Alembic migrations create it; this module describes it for queries.

Timestamps are stored as naive UTC and handed out timezone-aware; the ledger's `seq` gives a stable
newest-first order even when two entries share a timestamp.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("imagegen stores only timezone-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# BigInteger autoincrement is a plain INTEGER PRIMARY KEY (rowid) on SQLite.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

meta = Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text))

users = Table(
    "users",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("credits", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # Requests queued or running, kept in step by the transactions that change them (the limit).
    Column("in_flight", Integer, nullable=False, server_default=text("0")),
    CheckConstraint("credits >= 0", name="ck_users_credits_nonnegative"),
)

ledger = Table(
    "ledger_entries",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("user_id", String(128), ForeignKey("users.id"), nullable=False),
    Column("type", String(16), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=True),  # unknown for imported history
    Column("generation_request_id", String(64), nullable=True),
    Column("reason", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    # At most one deduction and one refund per request, whatever the retries (invariant 3).
    Index("ux_ledger_request_type", "generation_request_id", "type", unique=True),
    Index("ix_ledger_user_seq", "user_id", "seq"),
    Index(
        "ux_ledger_idempotency",
        "user_id",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
)

generation_requests = Table(
    "generation_requests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(128), ForeignKey("users.id"), nullable=False),
    Column("model", String(64), nullable=False),
    Column("style", String(64), nullable=False),
    Column("color", String(64), nullable=False),
    Column("size", String(32), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("cost", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("image_url", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("fingerprint", String(64), nullable=True),
    Column("source", String(16), nullable=False, server_default=text("'api'")),
    Column("webhook", Text, nullable=True),
    Column("webhook_events", String(64), nullable=True),  # comma-separated: start,completed
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Index("ix_requests_created", "created_at"),
    Index("ix_requests_user_created", "user_id", "created_at"),
    Index(
        "ux_requests_idempotency",
        "user_id",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index(
        "ix_requests_pending",
        "created_at",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "ix_requests_running_lease",
        "lease_expires_at",
        sqlite_where=text("status = 'running'"),
        postgresql_where=text("status = 'running'"),
    ),
)

models = Table(
    "models",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("failure_rate", Float, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    # The binding's deployments (a JSON list; NULL: the simulated engine) and {size: credits}.
    Column("deployments", JSON, nullable=True),
    Column("prices", JSON, nullable=True),
)

styles = Table(
    "styles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
)

colors = Table(
    "colors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
)

sizes = Table(
    "sizes",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("cost", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    CheckConstraint("cost > 0", name="ck_sizes_cost_positive"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("user_id", String(128), ForeignKey("users.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
)

reports = Table(
    "reports",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("period_start", UTCDateTime, nullable=False),
    Column("period_end", UTCDateTime, nullable=False),
    Column("document", JSON, nullable=False),
    Column("generated_at", UTCDateTime, nullable=False),
    Index("ix_reports_period_start", "period_start"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(128), primary_key=True),  # whose key: a user id, or "admin"
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # in_progress | done
    Column("response_status", Integer, nullable=True),
    Column("response_body", JSON, nullable=True),
    Column("response_headers", JSON, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("locked_until", UTCDateTime, nullable=True),
    Index("ix_idempotency_created", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),  # the webhook-id header: the same on every retry
    Column("generation_request_id", String(64), nullable=False),
    Column("event", String(16), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | abandoned
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    Index(
        "ix_webhooks_due",
        "next_attempt_at",
        sqlite_where=text("state = 'pending'"),
        postgresql_where=text("state = 'pending'"),
    ),
)

scheduled_runs = Table(
    "scheduled_runs",
    metadata,
    Column("period_id", String(64), primary_key=True),  # one row per scheduled period: exactly once
    Column("claimed_by", String(128), nullable=False),
    Column("claimed_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
)
