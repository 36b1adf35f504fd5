"""models.deployments and models.prices: a model's binding to engines, and its own prices

`deployments` holds the binding's ordered deployments as JSON (each `{"engine", "settings"}`, as
imagegen.engines.binding validated them); NULL is an unbound model, which runs the simulated
engine, as every existing model does. `prices` is `{size: credits}` overriding the sizes' costs for
this model; NULL charges the sizes' costs, as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("deployments", sa.JSON(), nullable=True))
    op.add_column("models", sa.Column("prices", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("prices")
        batch_op.drop_column("deployments")
