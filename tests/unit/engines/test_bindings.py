"""Bindings and settings are validated when set: every problem listed with its field."""

from __future__ import annotations

import pytest

from imagegen.domain.errors import InvalidBinding
from imagegen.engines import Registry, parse_binding
from imagegen.engines.template import render
from tests.unit.engines.fakes import REQUEST

REGISTRY = Registry.discover()
WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "positive": ["6", 0]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{width}}", "height": "{{height}}"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
}


def problems(data: object, **options: object) -> dict[str, str]:
    with pytest.raises(InvalidBinding) as caught:
        parse_binding("model-a", data, REGISTRY, **options)  # type: ignore[arg-type]
    assert caught.value.status == 422
    return {p.field: p.message for p in caught.value.details["problems"]}  # type: ignore[attr-defined]


def test_a_binding_with_two_deployments_parses_and_round_trips_through_json() -> None:
    data = {
        "deployments": [
            {"engine": "comfyui", "settings": {"base_url": "http://gpu-1:8188/", "workflow": WORKFLOW}},
            {"engine": "openai", "settings": {"model": "dall-e-3", "api_key_env": "OPENAI_API_KEY"}},
        ]
    }
    binding = parse_binding("model-a", data, REGISTRY)
    assert [d.engine for d in binding.deployments] == ["comfyui", "openai"]
    assert binding.deployments[0].settings.base_url == "http://gpu-1:8188"  # type: ignore[attr-defined]
    again = parse_binding("model-a", binding.to_json(), REGISTRY)
    assert again == binding and [d.key for d in again.deployments] == [d.key for d in binding.deployments]


def test_an_unknown_engine_is_refused_listing_the_known_ones() -> None:
    found = problems({"deployments": [{"engine": "dalle", "settings": {}}]})
    assert found == {
        "deployments[0].engine": "unknown engine 'dalle'; the known engines are: "
        "automatic1111, comfyui, openai, simulated"
    }


def test_every_problem_of_every_deployment_is_listed_with_its_field() -> None:
    found = problems(
        {
            "deployments": [
                {"engine": "openai", "settings": {"base_url": "ftp://x", "timout_s": 3, "concurrency": 0}},
                {"engine": "simulated", "settings": {"failure_rate": 2}},
            ]
        }
    )
    assert set(found) == {
        "deployments[0].settings.base_url",
        "deployments[0].settings.timout_s",
        "deployments[0].settings.concurrency",
        "deployments[1].settings.failure_rate",
    }
    assert found["deployments[0].settings.base_url"] == "must be an http:// or https:// URL with a host"
    assert found["deployments[0].settings.timout_s"] == "Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        (
            {"base_url": "http://user:pw@host"},
            "base_url",
            "must not carry credentials: name them with api_key_env",
        ),
        ({"api_key_env": "sk-abc def"}, "api_key_env", "must be the name of an environment variable"),
        (
            {"prompt_template": "{prompt.__class__}"},
            "prompt_template",
            "unknown placeholder {prompt.__class__}",
        ),
        ({"prompt_template": "{user_id}"}, "prompt_template", "unknown placeholder {user_id}"),
        ({"prompt_template": "{}"}, "prompt_template", "unknown placeholder {}"),
        ({"prompt_template": "{prompt!r}"}, "prompt_template", "may not have a conversion"),
        ({"prompt_template": "{prompt:{width}}"}, "prompt_template", "may not nest"),
        ({"prompt_template": "{prompt"}, "prompt_template", "not a valid template"),
        ({"size_map": {"512x512": "1024x1024"}}, "", "size_map changes sizes (512x512 -> 1024x1024)"),
        ({"size_map": {"big": "1024x1024"}, "resize": True}, "size_map", "'big' is not a size"),
        ({"extra": {"prompt": "x"}}, "extra", "prompt are set by imagegen"),
    ],
)
def test_openai_settings_refuse(settings: dict[str, object], field: str, message: str) -> None:
    found = problems({"deployments": [{"engine": "openai", "settings": settings}]})
    where = "deployments[0].settings" + (f".{field}" if field else "")
    assert message in found[where]


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ({}, "the workflow has no nodes"),
        ({"1": {"inputs": {}}}, "node '1' is not an API-format node"),
        ({"1": {"class_type": "X", "inputs": {"text": "{{prompt}} {{user}}"}}}, "unknown placeholders user"),
        ({"1": {"class_type": "X", "inputs": {"text": "a cat"}}}, "the workflow never uses {{prompt}}"),
    ],
)
def test_comfyui_workflows_are_checked_when_bound(workflow: dict[str, object], message: str) -> None:
    found = problems(
        {"deployments": [{"engine": "comfyui", "settings": {"base_url": "http://h", "workflow": workflow}}]}
    )
    assert message in found["deployments[0].settings.workflow"]


def test_a_comfyui_output_node_must_exist_and_a_model_placeholder_needs_a_model() -> None:
    workflow = {
        **WORKFLOW,
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{model}}"}},
    }
    settings = {"base_url": "http://h", "workflow": workflow, "output_node": "42"}
    found = problems({"deployments": [{"engine": "comfyui", "settings": settings}]})
    assert "output_node '42' is not a node of the workflow" in found["deployments[0].settings"]
    settings = {"base_url": "http://h", "workflow": workflow}
    found = problems({"deployments": [{"engine": "comfyui", "settings": settings}]})
    assert "the workflow uses {{model}}: set model" in found["deployments[0].settings"]


def test_the_shape_of_a_binding_is_checked() -> None:
    assert problems({}) == {"deployments": "must be a list of 1 to 8 deployments"}
    assert problems({"deployments": []}) == {"deployments": "must be a list of 1 to 8 deployments"}
    assert "deployments[0]" in problems({"deployments": [{"engine": "openai", "url": "x"}]})


def test_a_size_map_may_only_map_catalog_sizes() -> None:
    data = {"deployments": [{"engine": "simulated", "settings": {"size_map": {"640x640": "640x640"}}}]}
    found = problems(data, sizes=["512x512", "1024x1024"])
    assert found == {"deployments[0].settings.size_map": "not catalog sizes: 640x640"}


def test_the_prompt_template_fills_the_known_names_and_trims_an_empty_prompt() -> None:
    assert (
        render("{prompt}, {style} style, {color} colors", REQUEST)
        == "a lighthouse, watercolor style, pastel colors"
    )
    empty = REQUEST.__class__("r", "model-a", "", "anime", "neon", "1024x1792")
    assert (
        render("{prompt}, {style} at {width}x{height} for {model}", empty, "sdxl")
        == "anime at 1024x1792 for sdxl"
    )
    braces = REQUEST.__class__("r", "m", "{style} {0}", "anime", "neon", "512x512")
    assert render("{prompt}!", braces) == "{style} {0}!"  # a user's braces are never interpreted
