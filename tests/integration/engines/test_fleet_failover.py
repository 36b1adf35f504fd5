"""A model bound to several real deployments, through the Fleet a worker will call: fail-over,
cool-down, output checks and cancel across the protocol servers."""

from __future__ import annotations

import threading
import time

import pytest

from imagegen.engines import EngineError, Fleet, GenerationCanceled, Registry, Run, parse_binding
from imagegen.engines.routing import RetryPolicy
from tests.integration.engines import openai_server as api
from tests.integration.engines.comfyui_server import WORKFLOW, ComfyUIServer
from tests.integration.engines.images import size_of
from tests.integration.engines.protocol import closed_port
from tests.unit.engines.fakes import REQUEST

FAST = RetryPolicy(retries=1, backoff_s=0.01, max_backoff_s=0.5, jitter=0)


def comfy(url: str) -> dict[str, object]:
    return {
        "engine": "comfyui",
        "settings": {"base_url": url, "workflow": WORKFLOW, "model": "x", "poll_interval_s": 0.02},
    }


def openai(url: str, **settings: object) -> dict[str, object]:
    return {"engine": "openai", "settings": {"base_url": f"{url}/v1", "api_key_env": "K", **settings}}


def fleet() -> Fleet:
    return Fleet(Registry.discover(), environ={"K": "sk-local-000000000000"}, policy=FAST)


def test_a_model_fails_over_from_an_unreachable_comfyui_to_an_openai_compatible_api() -> None:
    with api.OpenAIServer(key="sk-local-000000000000") as openai_api:
        binding = parse_binding(
            "model-a", {"deployments": [comfy(closed_port()), openai(openai_api.url)]}, Registry.discover()
        )
        engines = fleet()
        image = engines.generate(binding, REQUEST, Run(10))
        assert size_of(image) == (512, 512) and len(openai_api.bodies) == 1
        engines.close()


def test_a_429_with_a_short_retry_after_is_retried_on_the_same_deployment() -> None:
    with api.OpenAIServer(key="sk-local-000000000000") as openai_api:
        openai_api.then(api.rate_limited(retry_after=None, retry_after_ms="50"))
        binding = parse_binding("model-a", {"deployments": [openai(openai_api.url)]}, Registry.discover())
        assert size_of(fleet().generate(binding, REQUEST, Run(10))) == (512, 512)
        assert len(openai_api.bodies) == 2


def test_a_refusal_is_not_failed_over_and_an_image_of_the_wrong_size_is() -> None:
    with api.OpenAIServer(key="sk-local-000000000000") as openai_api, ComfyUIServer() as comfyui:
        openai_api.then(api.refusal())
        data = {"deployments": [openai(openai_api.url), comfy(comfyui.url)]}
        binding = parse_binding("model-a", data, Registry.discover())
        engines = fleet()
        with pytest.raises(EngineError, match="the prompt was refused"):
            engines.generate(binding, REQUEST, Run(10))
        assert comfyui.prompts == {}
        wrong_size = parse_binding(
            "model-b", {"deployments": [comfy(comfyui.url), openai(openai_api.url)]}, Registry.discover()
        )
        comfyui.image_size = (768, 768)
        image = engines.generate(wrong_size, REQUEST, Run(10))
        assert size_of(image) == (512, 512) and len(comfyui.prompts) == 1  # checked, then OpenAI's


def test_a_canceled_generation_interrupts_comfyui_and_ends_canceled() -> None:
    with ComfyUIServer(run_seconds=30) as comfyui:
        binding = parse_binding("model-a", {"deployments": [comfy(comfyui.url)]}, Registry.discover())
        run = Run(60)

        def cancel_once_it_runs() -> None:  # not on a timer: a loaded machine may not have sent it yet
            deadline = time.monotonic() + 30
            while comfyui.running_id() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            run.cancel()

        threading.Thread(target=cancel_once_it_runs, daemon=True).start()
        with pytest.raises(GenerationCanceled):
            fleet().generate(binding, REQUEST, run)
        assert len(comfyui.interrupts) == 1
