"""A deployment's `concurrency` holds across processes: two storages on one database (as two worker
processes have), each with its own engines, never run more than `concurrency` generations of one
deployment at once between them. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imagegen import service
from imagegen.background import jobs
from imagegen.background.engines import JobEngines
from imagegen.clock import utcnow
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.generation import Status
from imagegen.engines import Registry, parse_binding
from imagegen.ports import Lease
from imagegen.storage.folder_images import FolderImageStore
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import BODY
from tests.support import migrated_sql

REGISTRY = Registry.discover()
LATENCY_S = 0.8


@pytest.fixture
async def two(database_url: str) -> AsyncIterator[tuple[SqlStorage, SqlStorage]]:
    async for first in migrated_sql(database_url):
        second = SqlStorage(database_url)
        try:
            yield first, second
        finally:
            await second.close()


async def _run_two_at_once(two: tuple[SqlStorage, SqlStorage], tmp_path: Path, concurrency: int) -> float:
    """Two jobs of one model, one in each 'process'; how long until both completed."""
    deployments = [
        {
            "engine": "simulated",
            "settings": {
                "failure_rate": 0,
                "latency_ms": int(LATENCY_S * 1000),
                "jitter": 0,
                "concurrency": concurrency,
            },
        }
    ]
    binding = parse_binding("model-a", {"deployments": deployments}, REGISTRY)
    await two[0].put_model(ModelSettings("model-a", deployments=tuple(binding.to_json()["deployments"])))
    ids = []
    for _ in range(2):
        request, _ = await service.create_generation(
            two[0], BODY, service.CreateRules(max_prompt_length=100), now=utcnow()
        )
        ids.append(request.id)
    engines = [JobEngines(REGISTRY, shared_slots=storage, owner=f"p{n}") for n, storage in enumerate(two)]

    async def process(n: int) -> jobs.JobOutcome:
        storage, now = two[n], utcnow()
        job = await storage.claim_job(Lease(f"p{n}/w", jobs.lease_until(now, 30)), now)
        assert job is not None
        return await jobs.run_job(storage, engines[n], FolderImageStore(tmp_path), job, f"p{n}/w")

    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(process(0), process(1))
    finally:
        for made in engines:
            made.close()
    took = time.monotonic() - started
    assert [o.status for o in outcomes] == ["completed", "completed"]
    for request_id in ids:
        assert (await two[1].get_request(request_id)).status is Status.COMPLETED  # type: ignore[union-attr]
    assert await two[0].violations() == []
    return took


async def test_a_deployment_of_concurrency_one_runs_one_generation_at_a_time_across_processes(
    two: tuple[SqlStorage, SqlStorage], tmp_path: Path
) -> None:
    assert await _run_two_at_once(two, tmp_path, concurrency=1) >= 2 * LATENCY_S


async def test_a_deployment_of_concurrency_two_runs_both_at_once(
    two: tuple[SqlStorage, SqlStorage], tmp_path: Path
) -> None:
    assert await _run_two_at_once(two, tmp_path, concurrency=2) < 2 * LATENCY_S
