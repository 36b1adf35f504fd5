"""API keys remember their last use

`api_keys.last_used_at`: when a request last used the key, recorded at most once a minute per key
and process (service/key_uses.py), so that an operator can tell a key in use from a forgotten one.

Numbered 0007: 0006 is taken by the model bindings' migration on another branch; until that one
lands, this one revises 0005 (the merge sets it to 0006).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 01:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
