"""Migrations upgrade a database that already holds data, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from imagegen.domain.catalog import ModelSettings
from imagegen.storage.sql.adapter import SqlStorage
from imagegen.storage.sql.database import MIGRATIONS


async def test_upgrading_a_used_database_counts_each_users_requests_in_flight(database_url: str) -> None:
    storage = SqlStorage(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with storage.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")  # the PostgreSQL fixture's database comes migrated
        command.upgrade(config, "0003")
    with storage.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, credits, created_at) VALUES ('u', 5, '2026-11-01')"))
        for n, status in enumerate(["pending", "running", "completed", "failed", "pending"]):
            conn.execute(
                text(
                    "INSERT INTO generation_requests (id, user_id, model, style, color, size, prompt, cost,"
                    " status, attempts, source, created_at) VALUES (:id, 'u', 'model-a', 'anime', 'neon',"
                    " '512x512', '', 1, :status, 0, 'import', '2026-11-01')"
                ),
                {"id": f"r{n}", "status": status},
            )

    await storage.migrate()

    with storage.engine.connect() as conn:
        assert conn.execute(text("SELECT in_flight FROM users WHERE id = 'u'")).scalar_one() == 3
    await storage.close()


async def test_upgrading_keeps_existing_models_unbound_at_their_sizes_costs(database_url: str) -> None:
    storage = SqlStorage(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with storage.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")  # the PostgreSQL fixture's database comes migrated
        command.upgrade(config, "0005")
    with storage.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (name, failure_rate, latency_ms, enabled)"
                " VALUES ('model-old', 0.25, 40, true)"
            )
        )

    await storage.migrate()

    assert await storage.model_settings("model-old") == ModelSettings("model-old", 0.25, 40, True)
    await storage.close()
