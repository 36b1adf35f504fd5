"""engine_slots: each deployment's concurrency across processes

One row per slot held: deployment `key` (engine + settings, engines.binding.Deployment.key), slot
number, holder (a worker's attempt), and when its lease runs out (a dead holder's slot is free then).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_slots",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", "slot"),
    )


def downgrade() -> None:
    op.drop_table("engine_slots")
