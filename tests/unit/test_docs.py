"""The README lists every setting: a setting added without documentation fails here."""

from __future__ import annotations

from pathlib import Path

from imagegen.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def env_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.append(str(choices[0]) if choices else f"IMAGEGEN_{name.upper()}")
    return names


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [name for name in env_names() if f"`{name}`" not in text]
    assert not missing, f"README.md does not document: {missing}"
