"""What the console's tests share: signing in over plain HTTP, a form's CSRF token, a second admin key."""

from __future__ import annotations

import asyncio
import re

import httpx

from imagegen import service
from imagegen.clock import utcnow
from imagegen.storage.sql.adapter import SqlStorage
from tests.support import Server

TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = TOKEN.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    """Opens the sign-in form (its pre-session cookie and token) and posts the key."""
    form = client.get("/console/sign-in")
    assert form.status_code == 200, form.text
    return client.post("/console/sign-in", data={"csrf": csrf_of(form.text), "key": key})


def issue_admin_key(server: Server) -> tuple[str, str]:
    """Another admin key, issued through the service on the server's database: (key id, key)."""

    async def issue() -> tuple[str, str]:
        storage = SqlStorage(f"sqlite:///{server.data_dir / 'imagegen.db'}")
        try:
            return await service.issue_key(storage, None, utcnow())
        finally:
            await storage.close()

    return asyncio.run(issue())
