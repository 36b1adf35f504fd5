"""Export and import carry each model's binding and own prices, on every storage adapter.

A `models` line replaces the stored model: moved to a new database (whose first start made the
initial models unbound), a model keeps its binding and charges its own prices. A models line that
would not pass the admin API (an unknown engine, a credential, a bad price) refuses the whole file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from imagegen import service
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.errors import InvalidInput
from imagegen.engines.registry import Registry
from imagegen.ports import Storage
from imagegen.service.transfer import parse_lines, to_case_study
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import T0, balance
from tests.support import load_initial_data

LATER = T0 + timedelta(days=30)
BINDING = {
    "deployments": [
        {"engine": "openai", "settings": {"model": "dall-e-3", "api_key_env": "OPENAI_API_KEY"}},
        {"engine": "simulated", "settings": {"failure_rate": 0.0}},
    ]
}
BODY = {"userId": "testUser1", "model": "model-a", "style": "anime", "color": "vibrant", "size": "1024x1024"}


async def export_lines(storage: Storage) -> list[str]:
    return [json.dumps(to_case_study(record)) async for record in storage.export_records()]


async def bind_and_price(storage: Storage) -> ModelSettings:
    await service.bind_model(storage, Registry.discover(), "model-a", BINDING)
    return await service.set_prices(storage, "model-a", {"1024x1024": 5})


async def test_a_binding_and_prices_come_back_from_an_export(storage: Storage) -> None:
    bound = await bind_and_price(storage)
    lines = await export_lines(storage)
    await service.unbind_model(storage, "model-a")
    await service.set_prices(storage, "model-a", {})
    version = await storage.config_version()

    counts = await storage.import_records(parse_lines(lines), LATER)

    assert counts["models"] == 1  # model-b was unchanged
    assert await storage.model_settings("model-a") == bound
    assert await storage.config_version() != version
    request, _ = await service.create_generation(storage, BODY, service.CreateRules(1000), now=LATER)
    assert request.cost == 5 and await balance(storage, "testUser1") == 95
    assert (await storage.import_records(parse_lines(lines), LATER))["models"] == 0


async def test_a_models_line_carries_the_binding_the_prices_and_no_secret(storage: Storage) -> None:
    await bind_and_price(storage)

    [line] = [json.loads(x) for x in await export_lines(storage) if '"model-a"' in x and '"models"' in x]

    assert line == {
        "collection": "models",
        "id": "model-a",
        "failureRate": 0.05,
        "latencyMs": 300,
        "enabled": True,
        "deployments": BINDING["deployments"],
        "prices": {"1024x1024": 5},
    }


async def test_a_fresh_database_gets_the_exported_models_over_its_initial_ones(
    storage: Storage, tmp_path: Path
) -> None:
    bound = await bind_and_price(storage)
    target = SqlStorage(f"sqlite:///{tmp_path / 'target.db'}")
    await target.migrate()
    await load_initial_data(target)

    await target.import_records(parse_lines(await export_lines(storage)), LATER)

    assert await target.model_settings("model-a") == bound
    assert await target.model_settings("model-b") == await storage.model_settings("model-b")
    await target.close()


@pytest.mark.parametrize(
    "model",
    [
        {"deployments": [{"engine": "no-such-engine"}]},
        {"deployments": [{"engine": "openai", "settings": {"api_key": "sk-0123456789abcdef"}}]},
        {"deployments": [{"engine": "openai", "settings": {"extra": {"user": "Bearer 0123456789abcdef"}}}]},
        {"prices": {"1024x1024": 0}},
        {"prices": {"big": 3}},
        {"failureRate": 2},
        {"id": "bad id!"},
    ],
)
async def test_a_bad_models_line_refuses_the_whole_file(storage: Storage, model: dict[str, object]) -> None:
    before = await storage.model_settings("model-a")
    user = json.dumps({"collection": "users", "id": "newcomer", "credits": 3})
    line = json.dumps({"collection": "models", "id": "model-a", **model})

    with pytest.raises(InvalidInput, match="line 2"):
        await storage.import_records(parse_lines([user, line]), LATER)

    assert await storage.model_settings("model-a") == before
    assert await storage.get_user("newcomer") is None


async def test_an_import_keeps_a_models_other_settings_from_its_line(storage: Storage) -> None:
    line = {"collection": "models", "id": "model-n", "failureRate": 0.5, "latencyMs": 10, "enabled": False}

    await storage.import_records(parse_lines([json.dumps(line)]), LATER)

    assert await storage.model_settings("model-n") == replace(
        ModelSettings("model-n"), failure_rate=0.5, latency_ms=10, enabled=False
    )
