"""The embedded deployment never loads PostgreSQL's driver: SQLite's path imports no psycopg."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from imagegen import service
from imagegen.clock import utcnow
from imagegen.storage import open_storage_adapter

storage = open_storage_adapter(sys.argv[1])
storage.migrate()
service.first_start(storage, utcnow())
body = {"userId": "testUser1", "model": "model-a", "style": "anime", "color": "vibrant", "size": "512x512"}
request, _ = service.create_generation(storage, body, max_prompt_length=100, now=utcnow())
assert storage.get_request(request.id) is not None
storage.close()
drivers = {"psycopg", "psycopg_pool", "psycopg_binary"}
print(sorted(name for name in sys.modules if name.split(".")[0] in drivers))
"""


def test_a_sqlite_deployment_creates_a_generation_without_importing_psycopg(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'imagegen.db'}"

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, url], capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == "[]"
