"""A separate distribution adds an engine without touching imagegen: tests/example_engine is
built and installed into a folder of its own, then found through its entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen.domain.errors import InvalidBinding
from imagegen.engines import EngineError, Failure, Fleet, Registry, Run, parse_binding
from tests.integration.engines.images import size_of
from tests.unit.engines.fakes import REQUEST

PACKAGE = Path(__file__).resolve().parents[2] / "example_engine"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
    ]
    source = tmp_path_factory.mktemp("source") / "imagegen-solid"
    shutil.copytree(PACKAGE, source)  # setuptools builds in the tree: keep ours clean
    subprocess.run([*pip, "--target", str(target), str(source)], check=True, timeout=120)
    return target


def test_an_installed_package_adds_an_engine_found_by_its_entry_point(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "solid" not in Registry.discover().names()
    monkeypatch.syspath_prepend(str(site))
    registry = Registry.discover()
    assert "solid" in registry.names() and {"openai", "comfyui"} <= set(registry.names())
    binding = parse_binding("model-a", {"deployments": [{"engine": "solid", "settings": {}}]}, registry)
    request = REQUEST.__class__("r", "model-a", "a field", "sketch", "crimson", "1024x1792")
    image = Fleet(registry).generate(binding, request, Run(5))
    assert size_of(image) == (1024, 1792)


def test_its_settings_are_validated_and_its_errors_classified_like_the_built_in_ones(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(site))
    registry = Registry.discover()
    with pytest.raises(InvalidBinding) as caught:
        parse_binding(
            "model-a", {"deployments": [{"engine": "solid", "settings": {"default_color": "nope"}}]}, registry
        )
    assert [p.field for p in caught.value.details["problems"]] == ["deployments[0].settings.default_color"]  # type: ignore[attr-defined]
    binding = parse_binding("model-a", {"deployments": [{"engine": "solid", "settings": {}}]}, registry)
    refused = REQUEST.__class__("r", "model-a", "refuse me", "sketch", "red", "512x512")
    with pytest.raises(EngineError) as error:
        Fleet(registry).generate(binding, refused, Run(5))
    assert error.value.failure is Failure.PERMANENT
