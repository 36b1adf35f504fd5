"""The built-in engines against real servers, when their URLs are given in the environment.

Optional services: these skip (even in CI) unless the variables are set, e.g.
  IMAGEGEN_TEST_COMFYUI_URL=http://127.0.0.1:8188 IMAGEGEN_TEST_COMFYUI_CHECKPOINT=sd_xl_base_1.0.safetensors
  IMAGEGEN_TEST_OPENAI_BASE_URL=https://api.openai.com/v1 IMAGEGEN_TEST_OPENAI_KEY_ENV=OPENAI_API_KEY
      IMAGEGEN_TEST_OPENAI_MODEL=dall-e-2
  IMAGEGEN_TEST_A1111_URL=http://127.0.0.1:7860
"""

from __future__ import annotations

import os

import pytest

from imagegen.engines import Fleet, ImageRequest, Registry, Run, parse_binding
from tests.integration.engines.comfyui_server import WORKFLOW
from tests.integration.engines.images import size_of

REQUEST = ImageRequest("live-1", "model-a", "a red bicycle", "watercolor", "pastel", "512x512")


def needs(*names: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.skip(f"a live server test needs {', '.join(missing)} (optional: not required in CI)")
    return {n: os.environ[n] for n in names}


def generated(deployment: dict[str, object]) -> bytes:
    registry = Registry.discover()
    binding = parse_binding("model-a", {"deployments": [deployment]}, registry)
    fleet = Fleet(registry)
    try:
        return fleet.generate(binding, REQUEST, Run(600))
    finally:
        fleet.close()


def test_a_real_comfyui_server_makes_the_image() -> None:
    env = needs("IMAGEGEN_TEST_COMFYUI_URL", "IMAGEGEN_TEST_COMFYUI_CHECKPOINT")
    settings = {"base_url": env["IMAGEGEN_TEST_COMFYUI_URL"], "workflow": WORKFLOW}
    settings["model"] = env["IMAGEGEN_TEST_COMFYUI_CHECKPOINT"]
    assert size_of(generated({"engine": "comfyui", "settings": settings})) == (512, 512)


def test_a_real_openai_compatible_api_makes_the_image() -> None:
    env = needs("IMAGEGEN_TEST_OPENAI_BASE_URL", "IMAGEGEN_TEST_OPENAI_KEY_ENV", "IMAGEGEN_TEST_OPENAI_MODEL")
    settings = {
        "base_url": env["IMAGEGEN_TEST_OPENAI_BASE_URL"],
        "api_key_env": env["IMAGEGEN_TEST_OPENAI_KEY_ENV"],
        "model": env["IMAGEGEN_TEST_OPENAI_MODEL"],
    }
    assert size_of(generated({"engine": "openai", "settings": settings})) == (512, 512)


def test_a_real_automatic1111_server_makes_the_image() -> None:
    env = needs("IMAGEGEN_TEST_A1111_URL")
    settings = {"base_url": env["IMAGEGEN_TEST_A1111_URL"], "steps": 10}
    assert size_of(generated({"engine": "automatic1111", "settings": settings})) == (512, 512)
