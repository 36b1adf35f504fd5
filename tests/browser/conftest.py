"""The console in a real browser: Playwright driving Debian's Chromium (`make install` installs it).

Playwright's own browser download cannot work here, so the browser is `/usr/bin/chromium`; without
it these tests skip, unless IMAGEGEN_REQUIRE_SERVICES=1 (CI), where they fail. Screenshots go to
`artifacts/screenshots/` in the checkout (gitignored), kept after the run for people to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_or_skip

CHROMIUM = os.environ.get("IMAGEGEN_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """One headless Chromium per module (each test opens its own context: cookies of its own)."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        require_or_skip(f"the browser tests need Chromium at {CHROMIUM} (`make install` installs Debian's)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_or_skip("the browser tests need the playwright package (`make install`)")
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox cannot start as root, which is how CI runs.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
