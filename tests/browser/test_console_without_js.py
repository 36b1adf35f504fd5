"""The console with JavaScript off: signing in and a form's action work the same, only not live."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.shop import shot
from tests.e2e.helpers import create_user, started
from tests.support import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from started(tmp_path_factory, "console-no-js")


@pytest.fixture
def page(chromium: Any, server: Server) -> Iterator[Any]:
    context = chromium.new_context(base_url=server.url, java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def test_sign_in_and_grant_credits_without_javascript(page: Any, server: Server, screenshots: Path) -> None:
    create_user(server, "nojs-carol", 7)
    page.goto("/console/users/nojs-carol")
    assert page.url.endswith("/console/sign-in")
    page.fill("input[name=key]", "ig_wrong")
    page.click("text=Sign in")
    assert "Unknown or revoked API key" in page.inner_text(".error")
    page.fill("input[name=key]", server.keys()["admin"])
    page.click("text=Sign in")
    assert page.url.endswith("/console")
    assert page.inner_text("h1") == "Overview"
    page.goto("/console/users/nojs-carol")
    page.fill("#grant input[name=amount]", "13")
    page.fill("#grant input[name=reason]", "phone support, no script")
    page.click("#grant button")
    assert page.url.endswith("/console/users/nojs-carol")
    assert page.inner_text("#balance") == "20"
    assert "Granted 13 credits" in page.inner_text(".flash")
    shot(page, screenshots, "user-without-js")
    with server.client(server.keys()["admin"]) as admin:
        assert admin.get("/v1/users/nojs-carol").json()["credits"] == 20


def test_signing_out_without_javascript(page: Any, server: Server) -> None:
    page.goto("/console")
    page.fill("input[name=key]", server.keys()["admin"])
    page.click("text=Sign in")
    page.click("text=Sign out")
    assert page.url.endswith("/console/sign-in")
    page.goto("/console/audit")
    assert page.url.endswith("/console/sign-in")
