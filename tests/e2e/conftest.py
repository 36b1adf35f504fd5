"""The end-to-end tests' servers: one real `imagegen serve` per module, shared by its tests.

A module gets its server from the `server` fixture, with the settings of its `SERVER_ENV` (a dict
of environment variables, if it has one); a module that needs a second server with other settings
builds it with `helpers.started`. Each test uses users of its own, so tests sharing a server do not meet.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.helpers import started
from tests.support import Server


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env: dict[str, str] = getattr(request.module, "SERVER_ENV", {})
    yield from started(tmp_path_factory, request.module.__name__.rpartition(".")[2], **env)


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.keys()["admin"]) as client:
        yield client
