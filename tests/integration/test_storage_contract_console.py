"""The storage contract, what the console reads: the workers holding jobs and one request's webhook
deliveries. Run on every adapter by the `storage` fixture, as test_storage_contract.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from imagegen.domain.queues import WorkerSeen
from imagegen.ports import Storage
from tests.integration.builders import LEASE, T0, claim, enqueue, new_generation

MINUTE = timedelta(minutes=1)
HOOK = "https://hooks.example.com/x"


async def test_no_running_job_means_no_worker_seen(storage: Storage) -> None:
    await enqueue(storage)
    assert await storage.lease_holders() == []


async def test_lease_holders_count_each_workers_running_jobs_and_its_latest_lease(storage: Storage) -> None:
    for _ in range(4):
        await enqueue(storage)
    await claim(storage, "w-b", T0)
    first = await claim(storage, "w-a", T0)
    await claim(storage, "w-a", T0 + MINUTE)
    ended = await claim(storage, "w-c", T0)
    assert await storage.complete(ended.id, "w-c", "/images/x.png", T0 + MINUTE)  # holds nothing now

    assert await storage.lease_holders() == [
        WorkerSeen("w-a", 2, T0 + MINUTE + LEASE),
        WorkerSeen("w-b", 1, T0 + LEASE),
    ]
    assert await storage.extend_leases({first.id: "w-a"}, T0 + 5 * MINUTE) == 1  # a heartbeat
    [a, _] = await storage.lease_holders()
    assert a == WorkerSeen("w-a", 2, T0 + 5 * MINUTE)


async def test_a_requests_webhook_deliveries_oldest_first_with_their_state(storage: Storage) -> None:
    new = replace(new_generation(), webhook=HOOK, webhook_events=frozenset({"start", "completed"}))
    request, _ = await storage.debit_and_enqueue(new)
    other = replace(new_generation(), webhook=HOOK, webhook_events=frozenset({"start"}))
    await storage.debit_and_enqueue(other)
    assert await storage.request_webhooks(request.id) == []  # nothing until the job starts

    job = await claim(storage, "w-1")
    assert job.id == request.id
    [started] = await storage.claim_webhooks(T0, T0 + LEASE, 10)
    await storage.webhook_delivered(started.id, T0 + MINUTE)
    assert await storage.complete(job.id, "w-1", "/images/x.png", T0 + MINUTE)
    [ended] = await storage.claim_webhooks(T0 + MINUTE, T0 + MINUTE + LEASE, 10)
    await storage.webhook_failed(ended.id, "HTTP 500", None)

    first, second = await storage.request_webhooks(request.id)
    assert (first.id, first.event, first.url, first.state) == (started.id, "start", HOOK, "delivered")
    assert (first.attempts, first.last_error, first.delivered_at) == (1, None, T0 + MINUTE)
    assert (second.event, second.state, second.attempts) == ("completed", "abandoned", 1)
    assert (second.last_error, second.delivered_at) == ("HTTP 500", None)
    assert first.created_at <= second.created_at
    assert await storage.request_webhooks("no-such-request") == []


async def test_find_users_by_the_start_of_their_id_case_sensitive_by_id(storage: Storage) -> None:
    for user_id in ("shop-b", "shop-a", "shop-A", "Shop-c", "shopper", "xshop-d"):
        await storage.create_user(user_id, 5, T0)

    assert [u.id for u in await storage.find_users("shop-", 10)] == ["shop-A", "shop-a", "shop-b"]
    assert [u.id for u in await storage.find_users("shop", 2)] == ["shop-A", "shop-a"]
    [user] = await storage.find_users("shopper", 10)
    assert (user.id, user.credits, user.created_at) == ("shopper", 5, T0)
    assert await storage.find_users("nobody", 10) == []
