"""Jobs run to their end on each built-in engine, against the protocol servers, on SQLite and
PostgreSQL: completed, failed over, failed (refunded once, with the engine's redacted reason),
canceled while running (the engine is stopped; refunded once), timed out (refunded once, a late
image discarded). The audit finds nothing after any of them.

What runs is the worker's own code (`background.jobs.run_one` / `run_job` over `JobEngines`),
the storage adapter and real sockets; only the remote servers are local ones (tests/integration/engines).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from imagegen import service
from imagegen.background import jobs
from imagegen.background.engines import JobEngines
from imagegen.clock import utcnow
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.generation import GenerationRequest, Status
from imagegen.domain.ledger import EntryType
from imagegen.engines import Registry, parse_binding
from imagegen.engines.routing import RetryPolicy
from imagegen.ports import Lease
from imagegen.storage.folder_images import FolderImageStore
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import BODY, balance, entries_for
from tests.integration.engines import openai_server as api
from tests.integration.engines.a1111_server import A1111Server
from tests.integration.engines.comfyui_server import WORKFLOW, ComfyUIServer
from tests.integration.engines.protocol import Reply, closed_port
from tests.support import migrated_sql

KEY = "sk-local-000000000000"
LIMITS = jobs.JobLimits(timeout_s=20, check_every_s=0.05, progress_every_s=0.2, grace_s=2)
REGISTRY = Registry.discover()


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[SqlStorage]:
    async for opened in migrated_sql(database_url):
        yield opened


@pytest.fixture
def engines() -> JobEngines:
    policy = RetryPolicy(retries=1, backoff_s=0.01, max_backoff_s=0.5, jitter=0)
    made = JobEngines(REGISTRY, environ={"K": KEY}, policy=policy)
    yield made
    made.close()


def comfy(url: str, **settings: object) -> dict[str, Any]:
    options = {"base_url": url, "workflow": WORKFLOW, "model": "x", "poll_interval_s": 0.02}
    return {"engine": "comfyui", "settings": {**options, **settings}}


def openai(url: str) -> dict[str, Any]:
    return {"engine": "openai", "settings": {"base_url": f"{url}/v1", "api_key_env": "K"}}


def a1111(url: str) -> dict[str, Any]:
    return {"engine": "automatic1111", "settings": {"base_url": url, "poll_interval_s": 0.02}}


def simulated(**settings: object) -> dict[str, Any]:
    return {"engine": "simulated", "settings": {"failure_rate": 0, "latency_ms": 0, **settings}}


async def bind(storage: SqlStorage, *deployments: dict[str, Any]) -> None:
    binding = parse_binding("model-a", {"deployments": list(deployments)}, REGISTRY)
    await storage.put_model(ModelSettings("model-a", deployments=tuple(binding.to_json()["deployments"])))


async def queued(storage: SqlStorage) -> GenerationRequest:
    request, _ = await service.create_generation(
        storage, BODY, service.CreateRules(max_prompt_length=100), now=utcnow()
    )
    return request


async def run(storage: SqlStorage, engines: JobEngines, tmp_path: Path, **limits: float) -> jobs.JobOutcome:
    now = utcnow()
    job = await storage.claim_job(Lease("w-1", jobs.lease_until(now, 30)), now)
    assert job is not None
    limited = jobs.JobLimits(**{**LIMITS.__dict__, **limits})
    return await jobs.run_job(storage, engines, FolderImageStore(tmp_path), job, "w-1", limits=limited)


async def ended(storage: SqlStorage, request_id: str, status: Status) -> GenerationRequest:
    """The request ended in `status`, debited once and refunded once exactly when it must be."""
    request = await storage.get_request(request_id)
    assert request is not None and request.status is status, request
    refunds = 1 if status.refunded else 0
    assert await entries_for(storage, "testUser1", request_id) == {
        EntryType.DEDUCTION: 1,
        **({EntryType.REFUND: 1} if refunds else {}),
    }
    assert await balance(storage, "testUser1") == 100 - (0 if refunds else 1)
    assert await storage.violations() == []
    return request


async def until(condition: Callable[[], object], seconds: float = 10) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "condition never held"
        await asyncio.sleep(0.02)


# -- completes on each engine -------------------------------------------------------------------
async def test_a_job_bound_to_comfyui_completes_with_its_image(storage, engines, tmp_path) -> None:
    with ComfyUIServer() as comfyui:
        await bind(storage, comfy(comfyui.url))
        request = await queued(storage)
        outcome = await run(storage, engines, tmp_path)
    assert outcome.status == "completed"
    done = await ended(storage, request.id, Status.COMPLETED)
    assert done.image_url == outcome.image_url
    assert (await FolderImageStore(tmp_path).open(request.id) or b"").startswith(b"\x89PNG")
    assert len(comfyui.prompts) == 1


async def test_a_job_bound_to_openai_completes(storage, engines, tmp_path) -> None:
    with api.OpenAIServer(key=KEY) as server:
        await bind(storage, openai(server.url))
        request = await queued(storage)
        assert (await run(storage, engines, tmp_path)).status == "completed"
    await ended(storage, request.id, Status.COMPLETED)
    assert len(server.bodies) == 1


async def test_a_job_bound_to_automatic1111_completes_and_shows_its_progress(
    storage, engines, tmp_path
) -> None:
    with A1111Server(step_seconds=0.06) as server:  # 20 steps: 1.2 s
        await bind(storage, a1111(server.url))
        request = await queued(storage)
        running = asyncio.create_task(run(storage, engines, tmp_path))
        seen: list[float] = []

        async def progressed() -> bool:
            now = await storage.get_request(request.id)
            if now is not None and now.progress is not None:
                seen.append(now.progress)
            return bool(seen) and 0 < seen[-1] < 1

        give_up = time.monotonic() + 10
        while not await progressed():
            assert time.monotonic() < give_up and not running.done(), "no progress was written"
            await asyncio.sleep(0.05)
        assert (await running).status == "completed"
    await ended(storage, request.id, Status.COMPLETED)


async def test_a_model_without_a_binding_runs_the_simulated_engine_with_its_own_figures(
    storage, tmp_path
) -> None:
    await storage.put_model(ModelSettings("model-a", failure_rate=1.0, latency_ms=0))
    request = await queued(storage)
    unbound = JobEngines(REGISTRY)
    try:
        outcome = await run(storage, unbound, tmp_path)
    finally:
        unbound.close()
    assert outcome.status == "failed"
    failed = await ended(storage, request.id, Status.FAILED)
    assert failed.error == "model-a failed to generate the image (simulated)"


# -- fail-over and failures ---------------------------------------------------------------------
async def test_a_job_fails_over_from_an_unreachable_comfyui_to_openai(storage, engines, tmp_path) -> None:
    with api.OpenAIServer(key=KEY) as server:
        await bind(storage, comfy(closed_port()), openai(server.url))
        request = await queued(storage)
        assert (await run(storage, engines, tmp_path)).status == "completed"
    await ended(storage, request.id, Status.COMPLETED)


async def test_a_job_fails_over_from_a_failing_automatic1111_to_a_transient_simulated_one(
    storage, engines, tmp_path
) -> None:
    with A1111Server() as server:
        server.fail_with = Reply.json({"detail": "Not Found"}, 404)  # a deployment failure: next one
        await bind(storage, a1111(server.url), simulated())
        request = await queued(storage)
        assert (await run(storage, engines, tmp_path)).status == "completed"
    await ended(storage, request.id, Status.COMPLETED)


async def test_every_deployment_failing_fails_the_job_once_with_a_reason_naming_no_server(
    storage, engines, tmp_path
) -> None:
    await bind(storage, comfy(closed_port()), a1111(closed_port()))
    request = await queued(storage)

    assert (await run(storage, engines, tmp_path)).status == "failed"

    failed = await ended(storage, request.id, Status.FAILED)
    assert failed.error and "attempts" in failed.error
    assert "127.0.0.1" not in failed.error and "http" not in failed.error


async def test_a_refused_prompt_fails_the_job_at_once_without_trying_the_next_deployment(
    storage, engines, tmp_path
) -> None:
    with api.OpenAIServer(key=KEY) as server, ComfyUIServer() as comfyui:
        server.then(api.refusal())
        await bind(storage, openai(server.url), comfy(comfyui.url))
        request = await queued(storage)
        assert (await run(storage, engines, tmp_path)).status == "failed"
    failed = await ended(storage, request.id, Status.FAILED)
    assert failed.error and "refused" in failed.error
    assert comfyui.prompts == {}


# -- canceled while running ---------------------------------------------------------------------
async def _cancel_while_running(
    storage: SqlStorage, engines: JobEngines, tmp_path: Path, started: Callable[[], object]
) -> tuple[GenerationRequest, float]:
    request = await queued(storage)
    running = asyncio.create_task(run(storage, engines, tmp_path))
    await until(started)
    canceled = await service.cancel_generation(storage, request.id, utcnow())
    assert canceled.status is Status.CANCELED
    at = time.monotonic()
    outcome = await asyncio.wait_for(running, 10)
    assert outcome.status == "canceled"
    return request, time.monotonic() - at


async def test_a_running_comfyui_job_canceled_is_interrupted_and_refunded_once(
    storage, engines, tmp_path
) -> None:
    with ComfyUIServer(run_seconds=30) as comfyui:
        await bind(storage, comfy(comfyui.url))
        request, took = await _cancel_while_running(storage, engines, tmp_path, comfyui.running_id)
        await until(lambda: comfyui.interrupts)
    assert took < 3
    assert len(comfyui.interrupts) == 1
    await ended(storage, request.id, Status.CANCELED)
    assert await FolderImageStore(tmp_path).open(request.id) is None


async def test_a_running_automatic1111_job_canceled_is_interrupted_and_its_late_image_discarded(
    storage, engines, tmp_path
) -> None:
    with A1111Server(step_seconds=1) as server:
        await bind(storage, a1111(server.url))
        request, took = await _cancel_while_running(storage, engines, tmp_path, lambda: server.current)
        await until(lambda: server.interrupts)
    assert took < 3
    await ended(storage, request.id, Status.CANCELED)
    # The interrupted image came back after the cancel: dropped.
    assert await FolderImageStore(tmp_path).open(request.id) is None


async def test_a_running_openai_job_canceled_ends_at_once_and_refunded_once(
    storage, engines, tmp_path
) -> None:
    with api.OpenAIServer(key=KEY) as server:
        server.then(Reply(200, b"{}", {"content-type": "application/json"}, delay=30))
        await bind(storage, openai(server.url))
        request, took = await _cancel_while_running(storage, engines, tmp_path, lambda: server.bodies)
    assert took < 3
    await ended(storage, request.id, Status.CANCELED)


async def test_a_running_simulated_job_canceled_is_refunded_once(storage, engines, tmp_path) -> None:
    await bind(storage, simulated(latency_ms=30_000, jitter=0))
    request = await queued(storage)
    running = asyncio.create_task(run(storage, engines, tmp_path))
    for _ in range(200):  # until the worker holds it (the engine then waits its 30 s)
        now = await storage.get_request(request.id)
        if now is not None and now.status is Status.RUNNING:
            break
        await asyncio.sleep(0.02)

    await service.cancel_generation(storage, request.id, utcnow())

    assert (await asyncio.wait_for(running, 5)).status == "canceled"
    await ended(storage, request.id, Status.CANCELED)


# -- timeouts -----------------------------------------------------------------------------------
async def test_an_image_that_comes_after_the_jobs_timeout_is_discarded_and_the_job_refunded_once(
    storage, engines, tmp_path
) -> None:
    await bind(storage, simulated(latency_ms=5_000, jitter=0, timeout_s=60))
    request = await queued(storage)

    outcome = await run(storage, engines, tmp_path, timeout_s=0.5)

    assert outcome.status == "failed"
    failed = await ended(storage, request.id, Status.FAILED)
    assert failed.error == "timed out: the generation took longer than 0.5 s"
    assert await FolderImageStore(tmp_path).open(request.id) is None
    assert not await storage.complete(request.id, "w-1", "/images/late.png", utcnow())
    await ended(storage, request.id, Status.FAILED)


async def test_a_comfyui_job_past_its_timeout_is_interrupted_failed_and_refunded_once(
    storage, engines, tmp_path
) -> None:
    with ComfyUIServer(run_seconds=30) as comfyui:
        await bind(storage, comfy(comfyui.url))
        request = await queued(storage)
        outcome = await run(storage, engines, tmp_path, timeout_s=1)
        await until(lambda: comfyui.interrupts)
    assert outcome.status == "failed"
    failed = await ended(storage, request.id, Status.FAILED)
    assert failed.error and "timed out" in failed.error
