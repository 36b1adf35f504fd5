"""The console in Chromium: sign in, watch the overview live, cancel, grant, revoke, every page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.shop import SLOW_MODEL, create, shop_server, shot
from tests.support import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from shop_server(tmp_path_factory, "console-browser")


@pytest.fixture
def page(chromium: Any, server: Server) -> Iterator[Any]:
    """A signed-in page: the sign-in form filled in and sent as a person would."""
    context = chromium.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto("/console")
    assert page.url.endswith("/console/sign-in")
    page.fill("input[name=key]", server.keys()["admin"])
    page.click("text=Sign in")
    page.wait_for_url("**/console")
    yield page
    context.close()


def test_a_new_generation_appears_on_the_overview_without_a_reload(
    page: Any, server: Server, screenshots: Path
) -> None:
    page.wait_for_selector("#latest")
    with server.client(server.keys()["admin"]) as admin:
        new = create(admin, "shop-bob", model=SLOW_MODEL, prompt="a lighthouse at dusk")
    # No navigation: the page's script swaps the figures in every two seconds.
    page.wait_for_selector(f"#latest a:has-text('{new['id']}')")
    assert page.url.endswith("/console")
    assert page.locator("#in-flight").inner_text() != "0"
    shot(page, screenshots, "overview")


def test_cancel_a_pending_generation_refunds_it(page: Any, server: Server, screenshots: Path) -> None:
    with server.client(server.keys()["admin"]) as admin:
        before = admin.get("/v1/users/shop-bob").json()["credits"]
        pending = create(admin, "shop-bob", model=SLOW_MODEL, prompt="a queue that will not move")
        assert admin.get("/v1/users/shop-bob").json()["credits"] == before - pending["cost"]
    page.goto(f"/console/generations/{pending['id']}")
    assert page.inner_text("#status") == "pending"
    shot(page, screenshots, "generation-pending")
    page.click("text=Cancel and refund")
    page.wait_for_selector(".flash")
    assert page.inner_text("#status") == "canceled"
    assert "refund" in page.inner_text("table")
    with server.client(server.keys()["admin"]) as admin:
        assert admin.get(f"/v1/generations/{pending['id']}").json()["status"] == "canceled"
        assert admin.get("/v1/users/shop-bob").json()["credits"] == before


def test_grant_credits_with_a_reason(page: Any, server: Server, screenshots: Path) -> None:
    page.goto("/console/users")
    page.fill("input[name=q]", "shop-alice")
    page.click("text=Find")
    page.wait_for_url("**/console/users/shop-alice")
    before = int(page.inner_text("#balance"))
    page.fill("#grant input[name=amount]", "25")
    page.fill("#grant input[name=reason]", "goodwill after an outage")
    page.click("#grant button")
    page.wait_for_selector(".flash")
    assert int(page.inner_text("#balance")) == before + 25
    assert "goodwill after an outage" in page.inner_text("#ledger")
    shot(page, screenshots, "user")
    with server.client(server.keys()["admin"]) as admin:
        assert admin.get("/v1/users/shop-alice").json()["credits"] == before + 25


def test_issue_a_key_then_revoke_it_and_see_it_refused(page: Any, server: Server) -> None:
    page.goto("/console/users/shop-bob")
    page.click("text=Issue a new key")
    key = page.inner_text("#new-key")
    key_id = page.inner_text("code >> nth=0")
    with server.client(key) as user:
        assert user.get("/v1/users/shop-bob").status_code == 200
    page.goto("/console/users/shop-bob")
    _revoke(page, key_id)
    page.wait_for_selector(".flash")
    assert "revoked" in page.inner_text(".flash")
    with server.client(key) as user:
        refused = user.get("/v1/users/shop-bob")
    assert refused.status_code == 401


def _revoke(page: Any, key_id: str) -> None:
    """The key list's button when the page lists keys; the key-id form otherwise."""
    row = page.locator(f"#keys tr:has-text('{key_id}') button")
    if row.count():
        row.click()
    else:
        page.fill("#keys input[name=key_id]", key_id)
        page.click("#keys button.danger")


def test_every_page_with_data(page: Any, server: Server, screenshots: Path) -> None:
    with server.client(server.keys()["admin"]) as admin:
        finished = admin.get("/v1/generations", params={"status": "completed", "limit": "1"}).json()
    done = finished["items"][0]["id"]
    pages = {
        "overview-full": "/console",
        "generations": "/console/generations",
        "generations-filtered": "/console/generations?model=model-a&status=failed",
        "generation-completed": f"/console/generations/{done}",
        "users": "/console/users",
        "user-bob": "/console/users/shop-bob",
        "catalog": "/console/catalog",
        "reports": "/console/reports",
        "audit": "/console/audit",
    }
    for name, path in pages.items():
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        shot(page, screenshots, name)
    page.goto(f"/console/generations/{done}")
    assert page.locator("img.image").evaluate("img => img.naturalWidth") > 0
    page.goto("/console/reports")
    page.click("td a >> nth=0")
    page.wait_for_selector("iframe.report")
    page.frame_locator("iframe.report").locator("text=Summary").first.wait_for()
    page.click("#report-page")
    page.wait_for_selector("text=Summary")
    shot(page, screenshots, "report")
    page.goto("/console/audit")
    page.click("text=Run the audit")
    page.wait_for_selector("#audit-clean")
    shot(page, screenshots, "audit-run")
