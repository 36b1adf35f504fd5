"""/docs and /redoc work offline: every asset they name is the server's own, and it serves them."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.support import Server

SERVER_ENV = {"IMAGEGEN_WORKERS": "0"}


def referenced(html: str) -> list[str]:
    """Every URL the page loads: src and href attributes, and the JS config's url values."""
    found = re.findall(r'(?:src|href)="([^"]+)"', html)
    found += re.findall(r"""(?:url|specUrl)['"]?\s*:\s*['"]([^'"]+)['"]""", html)
    found += re.findall(r"""Redoc\.init\(\s*['"]([^'"]+)['"]""", html)
    found += re.findall(r"<redoc spec-url=\"([^\"]+)\"", html)
    return found


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_a_docs_page_names_only_the_servers_own_assets_and_they_are_served(server: Server, page: str) -> None:
    response = httpx.get(f"{server.url}{page}", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    urls = referenced(html)

    assert urls and "/openapi.json" in urls
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html.replace('"https://imagegen', "")), html
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = httpx.get(f"{server.url}{url}", timeout=30)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000 or url == "/openapi.json", url
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all(
        httpx.get(f"{server.url}{u}", timeout=30).headers["content-type"].startswith("text/javascript")
        for u in scripts
    )


def test_swagger_ui_calls_no_online_validator_and_keeps_the_pasted_key(server: Server) -> None:
    html = httpx.get(f"{server.url}/docs", timeout=30).text

    assert '"validatorUrl": null' in html and '"persistAuthorization": true' in html


def test_the_openapi_document_offers_the_bearer_key_to_the_authorize_button(server: Server) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()

    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An imagegen API key (ig_...)",
    }
    assert document["paths"]["/v1/generations"]["post"]["security"] == [{"bearerAuth": []}]
    assert not any(path.startswith(("/docs", "/redoc")) or path == "/" for path in document["paths"])


def test_the_root_leads_to_the_docs_and_an_unknown_asset_is_a_404(server: Server) -> None:
    root = httpx.get(f"{server.url}/", timeout=30)
    missing = httpx.get(f"{server.url}/docs/assets/../../etc/passwd", timeout=30)
    unknown = httpx.get(f"{server.url}/docs/assets/other.js", timeout=30)

    assert root.status_code == 307 and root.headers["location"] in ("/console", "/docs")
    assert missing.status_code == 404 and unknown.status_code == 404
