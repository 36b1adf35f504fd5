"""Alembic environment: imagegen runs migrations itself at start, on the connection it hands over."""

from __future__ import annotations

from alembic import context

from imagegen.storage.sql.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` from a developer's shell
    from sqlalchemy import create_engine

    url = context.config.get_main_option("sqlalchemy.url") or "sqlite://"
    connection = create_engine(url).connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
