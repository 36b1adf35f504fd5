"""A model's binding and its own prices through the service layer, on every storage adapter.

The binding is validated with an engine registry and the catalog's sizes before anything is written;
a model's own price is what a create charges, and a failed job refunds what was charged, even when
the price changed in between.
"""

from __future__ import annotations

from typing import Any

import pytest

from imagegen import service
from imagegen.domain.errors import InvalidBinding, InvalidPrices, ModelNotFound
from imagegen.domain.ledger import EntryType
from imagegen.engines.registry import Registry
from imagegen.ports import Storage
from tests.integration.builders import T0, balance, claim, entries_for

REGISTRY = Registry.discover()
WORKFLOW = {"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}"}}}
BODY = {"userId": "testUser1", "model": "model-a", "style": "anime", "color": "vibrant", "size": "1024x1024"}
RULES = service.CreateRules(max_prompt_length=1000)
COMFY = {
    "engine": "comfyui",
    "settings": {"base_url": "http://gpu-1:8188/", "workflow": WORKFLOW},
}
OPENAI = {
    "engine": "openai",
    "settings": {"model": "dall-e-3", "api_key_env": "OPENAI_API_KEY", "timeout_s": 120},
}


async def test_a_models_own_price_is_charged_and_a_failure_refunds_what_was_charged(storage: Storage) -> None:
    await service.set_prices(storage, "model-a", {"1024x1024": 5})

    request, _ = await service.create_generation(storage, BODY, RULES, now=T0)
    other, _ = await service.create_generation(storage, {**BODY, "model": "model-b"}, RULES, now=T0)
    assert (request.cost, other.cost) == (5, 3)
    assert await balance(storage, "testUser1") == 100 - 5 - 3

    await service.set_prices(storage, "model-a", {"1024x1024": 9})  # repriced while the job waits
    job = await claim(storage, "w-1")
    assert job.id == request.id
    assert await storage.fail_and_refund(job.id, "engine failed", T0, worker_id="w-1")

    assert await balance(storage, "testUser1") == 100 - 3
    assert await entries_for(storage, "testUser1", request.id) == {
        EntryType.DEDUCTION: 1,
        EntryType.REFUND: 1,
    }
    assert await storage.violations() == []


async def test_dropping_a_models_prices_charges_the_sizes_cost_again(storage: Storage) -> None:
    await service.set_prices(storage, "model-a", {"1024x1024": 5, "512x512": 2})
    await service.set_prices(storage, "model-a", {})

    request, _ = await service.create_generation(storage, BODY, RULES, now=T0)

    assert request.cost == 3


@pytest.mark.parametrize(
    ("prices", "fields"),
    [
        ({"2048x2048": 5}, ["prices.2048x2048"]),
        ({"512x512": 0, "1024x1024": -1}, ["prices.512x512", "prices.1024x1024"]),
        ({"512x512": 1.5}, ["prices.512x512"]),
        ({"512x512": True}, ["prices.512x512"]),
        ({"512x512": "2"}, ["prices.512x512"]),
        ([5], ["prices"]),
    ],
)
async def test_bad_prices_are_refused_listing_each_and_change_nothing(
    storage: Storage, prices: Any, fields: list[str]
) -> None:
    await service.set_prices(storage, "model-a", {"512x512": 2})
    version = await storage.config_version()

    with pytest.raises(InvalidPrices) as refused:
        await service.set_prices(storage, "model-a", prices)

    assert [p.field for p in refused.value.details["problems"]] == fields  # type: ignore[attr-defined]
    assert (await service.model_settings(storage, "model-a")).prices == {"512x512": 2}
    assert await storage.config_version() == version


async def test_a_binding_is_stored_normalized_and_unbinding_returns_to_simulated(storage: Storage) -> None:
    before = await storage.config_version()

    bound = await service.bind_model(storage, REGISTRY, "model-a", {"deployments": [COMFY, OPENAI]})

    stored = await service.model_settings(storage, "model-a")
    assert stored == bound and stored.bound
    assert stored.binding_json() == {
        "deployments": [
            {
                "engine": "comfyui",
                "settings": {"base_url": "http://gpu-1:8188", "workflow": WORKFLOW},
            },
            {"engine": "openai", "settings": {"model": "dall-e-3", "api_key_env": "OPENAI_API_KEY"}},
        ]
    }  # the trailing slash and the default timeout are normalized away
    assert (stored.failure_rate, stored.latency_ms, stored.enabled) == (0.05, 300, True)
    assert await storage.config_version() != before

    unbound = await service.unbind_model(storage, "model-a")

    assert not unbound.bound and await service.model_settings(storage, "model-a") == unbound


@pytest.mark.parametrize(
    ("binding", "field"),
    [
        ({"deployments": []}, "deployments"),
        ({"deployments": [{"engine": "nope"}]}, "deployments[0].engine"),
        (
            {"deployments": [{"engine": "openai", "settings": {"timout_s": 3}}]},
            "deployments[0].settings.timout_s",
        ),
        (
            {"deployments": [{"engine": "openai", "settings": {"api_key_env": "sk-abcdefghijklmnop"}}]},
            "deployments[0].settings.api_key_env",
        ),
        (
            {"deployments": [{"engine": "openai", "settings": {"api_key": "x"}}]},
            "deployments[0].settings.api_key",
        ),
        (
            {"deployments": [{"engine": "openai", "settings": {"extra": {"user": "Bearer abcdefghijkl"}}}]},
            "deployments[0].settings.extra.user",
        ),
        (
            {"deployments": [{"engine": "simulated", "settings": {"size_map": {"9x9": "9x9"}}}]},
            "deployments[0].settings.size_map",
        ),
    ],
)
async def test_a_bad_binding_is_refused_naming_the_field_and_changes_nothing(
    storage: Storage, binding: Any, field: str
) -> None:
    version = await storage.config_version()

    with pytest.raises(InvalidBinding) as refused:
        await service.bind_model(storage, REGISTRY, "model-a", binding)

    assert field in [p.field for p in refused.value.details["problems"]]  # type: ignore[attr-defined]
    assert not (await service.model_settings(storage, "model-a")).bound
    assert await storage.config_version() == version


async def test_binding_pricing_or_reading_a_model_not_in_the_catalog_is_not_found(storage: Storage) -> None:
    with pytest.raises(ModelNotFound):
        await service.bind_model(storage, REGISTRY, "model-z", {"deployments": [OPENAI]})
    with pytest.raises(ModelNotFound):
        await service.set_prices(storage, "model-z", {"512x512": 2})
    with pytest.raises(ModelNotFound):
        await service.unbind_model(storage, "model-z")
    with pytest.raises(ModelNotFound):
        await service.model_settings(storage, "model-z")
    assert await storage.model_settings("model-z") is None


async def test_a_workflow_input_that_only_mentions_a_token_is_not_taken_for_a_credential(
    storage: Storage,
) -> None:
    node = {
        "class_type": "BNK_CLIPTextEncodeAdvanced",
        "inputs": {"text": "{{prompt}}", "token_normalization": "none"},
    }
    comfy = {"engine": "comfyui", "settings": {"base_url": "http://gpu-1:8188", "workflow": {"6": node}}}

    bound = await service.bind_model(storage, REGISTRY, "model-a", {"deployments": [comfy]})

    assert bound.deployments[0]["settings"]["workflow"]["6"] == node
