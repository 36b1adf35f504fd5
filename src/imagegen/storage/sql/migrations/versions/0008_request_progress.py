"""generation_requests.progress: a running job's progress (0..1) as its engine reports it

NULL until an engine reports progress (and for every request made before); a claim sets it back to
NULL, so a retried job does not show the progress of its lost attempt.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 01:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generation_requests", sa.Column("progress", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generation_requests", schema=None) as batch_op:
        batch_op.drop_column("progress")
