"""lighter indexes on the two tables every create writes to

Every create inserts a generation request and a ledger entry, and each index on them is one more
B-tree page written. The Idempotency-Key indexes now cover only the rows that carry a key (most
carry none; uniqueness is unchanged, NULLs were never compared), and the index on requests in
flight goes: since 0004 the in-flight limit reads the users.in_flight counter instead.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

HAS_KEY = sa.text("idempotency_key IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_requests_user_in_flight", table_name="generation_requests")
    for table, name in (
        ("generation_requests", "ux_requests_idempotency"),
        ("ledger_entries", "ux_ledger_idempotency"),
    ):
        op.drop_index(name, table_name=table)
        op.create_index(
            name,
            table,
            ["user_id", "idempotency_key"],
            unique=True,
            sqlite_where=HAS_KEY,
            postgresql_where=HAS_KEY,
        )


def downgrade() -> None:
    for table, name in (
        ("generation_requests", "ux_requests_idempotency"),
        ("ledger_entries", "ux_ledger_idempotency"),
    ):
        op.drop_index(name, table_name=table)
        op.create_index(name, table, ["user_id", "idempotency_key"], unique=True)
    in_flight = sa.text("status IN ('pending', 'running')")
    op.create_index(
        "ix_requests_user_in_flight",
        "generation_requests",
        ["user_id"],
        sqlite_where=in_flight,
        postgresql_where=in_flight,
    )
