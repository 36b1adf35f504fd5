"""The console's sign-in and session rules over plain HTTP: redirects, cookie flags, CSRF, revocation."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.console_support import csrf_of, issue_admin_key, sign_in
from tests.e2e.helpers import create_user
from tests.support import Server


@pytest.fixture
def browser(server: Server) -> Iterator[httpx.Client]:
    """A client that keeps cookies, as a browser would, and does not follow redirects."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


def test_without_a_session_every_page_redirects_to_sign_in(browser: httpx.Client) -> None:
    for path in ("/console", "/console/generations", "/console/users/testUser1", "/console/audit"):
        response = browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/sign-in"


def test_sign_in_sets_a_strict_http_only_cookie(server: Server, browser: httpx.Client) -> None:
    response = sign_in(browser, server.keys()["admin"])
    assert response.status_code == 303 and response.headers["location"] == "/console"
    cookie = set_cookies(response)["imagegen_console"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    page = browser.get("/console")
    assert page.status_code == 200 and "Overview" in page.text


def test_behind_https_the_cookies_are_secure(server: Server) -> None:
    """A proxy that ends TLS says so with X-Forwarded-Proto (the client would not send a Secure
    cookie back over plain HTTP, so this test hands the sign-in form's cookie back itself)."""
    with httpx.Client(base_url=server.url, headers={"X-Forwarded-Proto": "https"}) as client:
        form = client.get("/console/sign-in")
        pre = set_cookies(form)["imagegen_console_signin"]
        assert "Secure" in pre
        cookie = pre.split(";", 1)[0]
        data = {"csrf": csrf_of(form.text), "key": server.keys()["admin"]}
        response = client.post("/console/sign-in", data=data, headers={"Cookie": cookie})
    assert response.status_code == 303
    assert "Secure" in set_cookies(response)["imagegen_console"]


def test_a_bad_key_gets_a_clear_message_and_no_session(browser: httpx.Client) -> None:
    response = sign_in(browser, "ig_not-a-key")
    assert response.status_code == 401
    assert "Unknown or revoked API key" in response.text
    assert "imagegen_console" not in set_cookies(response)
    assert browser.get("/console").status_code == 303


def test_a_user_key_is_refused_with_a_clear_message(server: Server, browser: httpx.Client) -> None:
    response = sign_in(browser, server.keys()["testUser1"])
    assert response.status_code == 403
    assert "needs an admin key" in response.text


def test_sign_in_without_its_form_token_is_refused(server: Server, browser: httpx.Client) -> None:
    response = browser.post("/console/sign-in", data={"key": server.keys()["admin"]})
    assert response.status_code == 403
    assert "imagegen_console" not in set_cookies(response)


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    server: Server, browser: httpx.Client
) -> None:
    create_user(server, "console-csrf", 10)
    sign_in(browser, server.keys()["admin"])
    page = browser.get("/console/users/console-csrf")
    token = csrf_of(page.text)
    form = {"amount": "5", "reason": "test"}
    assert browser.post("/console/users/console-csrf/credits", data=form).status_code == 403
    wrong = browser.post("/console/users/console-csrf/credits", data={**form, "csrf": token[:-1] + "0"})
    assert wrong.status_code == 403
    with server.client(server.keys()["admin"]) as admin:
        assert admin.get("/v1/users/console-csrf").json()["credits"] == 10
    done = browser.post("/console/users/console-csrf/credits", data={**form, "csrf": token})
    assert done.status_code == 303
    with server.client(server.keys()["admin"]) as admin:
        assert admin.get("/v1/users/console-csrf").json()["credits"] == 15


def test_a_forged_cookie_is_no_session(server: Server, browser: httpx.Client) -> None:
    sign_in(browser, server.keys()["admin"])
    value = browser.cookies["imagegen_console"]
    browser.cookies.clear()
    key_hash, nonce, issued, signature = value.split(".")
    browser.cookies.set("imagegen_console", f"{key_hash}.{nonce}.{int(issued) + 99999}.{signature}")
    assert browser.get("/console").status_code == 303


def test_a_revoked_keys_session_is_signed_out(server: Server, browser: httpx.Client) -> None:
    key_id, key = issue_admin_key(server)
    assert sign_in(browser, key).status_code == 303
    assert browser.get("/console").status_code == 200
    with server.client(server.keys()["admin"]) as admin:
        assert admin.delete(f"/v1/admin/keys/{key_id}").status_code == 204
    response = browser.get("/console")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/console/sign-in?why=")
    assert browser.get(response.headers["location"]).status_code == 200
    assert "revoked" in browser.get(response.headers["location"]).text
    assert browser.get("/console").status_code == 303  # the cookie is gone, too


def test_a_refused_action_answers_its_status_with_the_reason(server: Server, browser: httpx.Client) -> None:
    create_user(server, "console-poor", 3)
    sign_in(browser, server.keys()["admin"])
    token = csrf_of(browser.get("/console/users/console-poor").text)
    form = {"csrf": token, "amount": "-10", "reason": "too much"}
    response = browser.post("/console/users/console-poor/credits", data=form)
    assert response.status_code == 402
    assert "Insufficient credits" in response.text
    with server.client(server.keys()["admin"]) as admin:
        assert admin.get("/v1/users/console-poor").json()["credits"] == 3
    missing = browser.get("/console/generations/no-such-request")
    assert missing.status_code == 404
