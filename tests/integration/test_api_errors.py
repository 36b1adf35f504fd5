"""The app's answer to an error nobody expected: a 500 problem that tells the client the connection closes.

uvicorn closes a connection after an exception has left the app, whatever was answered: the answer
must say `Connection: close`, or a client would send its next request on a dying connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from imagegen.api.app import create_app
from imagegen.settings import Settings


def test_an_unexpected_error_is_a_500_problem_that_says_connection_close(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))

    @app.get("/_test/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/_test/boom")

    response = asyncio.run(call())
    assert response.status_code == 500
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error"
    assert "a bug" not in response.text
