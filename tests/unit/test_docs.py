"""The docs stay true to the code: every setting documented, every link inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from imagegen.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def env_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.append(str(choices[0]) if choices else f"IMAGEGEN_{name.upper()}")
    return names


def test_every_setting_is_documented_in_the_configuration_page() -> None:
    text = CONFIGURATION.read_text()
    missing = [name for name in env_names() if f"`{name}`" not in text]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_every_relative_link_of_the_docs_names_a_file_of_the_repository() -> None:
    broken = [
        f"{page.relative_to(ROOT)} -> {target}"
        for page in PAGES
        for target in LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, broken


def test_the_docs_name_no_file_outside_the_repository() -> None:
    outside = [str(page.relative_to(ROOT)) for page in PAGES if "shared/" in page.read_text()]
    assert not outside, f"these pages point outside the repository: {outside}"


def test_the_readme_is_a_front_door_not_a_manual() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 160
