"""users.in_flight: a user's queued and running requests, kept in step with them (the in-flight limit)

Counting them on every create grew with the queue; a counter checked in the debit's own UPDATE does
not. Existing requests are counted once here.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 08:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite supports it): a batch copy of `users` would trip the foreign keys.
    op.add_column("users", sa.Column("in_flight", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.execute(
        "UPDATE users SET in_flight = (SELECT count(*) FROM generation_requests r "
        "WHERE r.user_id = users.id AND r.status IN ('pending', 'running'))"
    )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("in_flight")
