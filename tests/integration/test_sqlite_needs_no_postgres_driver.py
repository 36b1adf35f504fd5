"""The embedded deployment never loads PostgreSQL's driver: SQLite's path imports no psycopg."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio
import sys
from imagegen.clock import utcnow
from imagegen.domain.catalog import INITIAL_DATA, Catalog
from imagegen.domain.generation import GenerationSpec, NewGeneration
from imagegen.domain.ids import new_id
from imagegen.storage import open_storage_adapter

async def main():
    storage = open_storage_adapter(sys.argv[1])
    await storage.migrate()
    data = INITIAL_DATA
    models = {m.name: m for m in data.models}
    catalog = Catalog(models, frozenset(data.styles), frozenset(data.colors), dict(data.sizes))
    await storage.load_initial_data(catalog, dict(data.users), [], utcnow())
    version, catalog = await storage.config_snapshot()
    spec = GenerationSpec("testUser1", "model-a", "anime", "vibrant", "512x512", "a cat")
    new = NewGeneration(new_id(), spec, catalog.sizes["512x512"], utcnow())
    request, _ = await storage.debit_and_enqueue(new, version)
    assert await storage.get_request(request.id) is not None
    await storage.close()

asyncio.run(main())
drivers = {"psycopg", "psycopg_pool", "psycopg_binary"}
print(sorted(name for name in sys.modules if name.split(".")[0] in drivers))
"""


def test_a_sqlite_deployment_creates_a_generation_without_importing_psycopg(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'imagegen.db'}"

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, url], capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == "[]"
