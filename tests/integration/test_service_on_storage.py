"""Use cases of the service layer on every storage adapter: what they add to the port's contract.

The storage contract (test_storage_contract.py) goes through the port alone; these go through the
service layer and the job recovery on the same `storage` fixture (memory, SQLite, PostgreSQL,
Firestore), where a rule of theirs meets what each adapter stores.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from imagegen import service
from imagegen.background import jobs
from imagegen.domain import reports
from imagegen.domain.errors import InvalidInput, InvalidState, NotFound
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.ports import Storage
from tests.integration.builders import (
    LEASE,
    T0,
    W47,
    balance,
    claim,
    enqueue,
    entries_for,
    finished,
    requests_around_week_47,
    whole_ledger,
)

MINUTE = timedelta(minutes=1)
LOOSE = reports.Thresholds(min_requests=1, min_key_requests=1)  # a handful of requests a week will do


async def test_the_service_refuses_a_zero_move_or_an_empty_reason(storage: Storage) -> None:
    with pytest.raises(InvalidInput):
        await service.move_credits(storage, "testUser2", 0, "nothing", T0)
    with pytest.raises(InvalidInput):
        await service.move_credits(storage, "testUser2", 5, "   ", T0)

    assert len(await whole_ledger(storage, "testUser2")) == 1


async def test_service_create_generation_prices_the_size_from_the_catalog(storage: Storage) -> None:
    body = {
        "userId": "testUser1",
        "model": "model-b",
        "style": "sketch",
        "color": "neon",
        "size": "1024x1792",
    }

    request, created = await service.create_generation(
        storage, body, service.CreateRules(max_prompt_length=1000), now=T0
    )

    assert created and request.cost == 4
    assert await balance(storage, "testUser1") == 96


async def test_a_nul_character_is_refused_before_any_backend_sees_it(storage: Storage) -> None:
    body = {
        "userId": "testUser1",
        "model": "model-a",
        "style": "anime",
        "color": "vibrant",
        "size": "512x512",
    }
    body["prompt"] = "a\x00cat"
    with pytest.raises(InvalidInput, match="NUL"):
        await service.create_generation(storage, body, service.CreateRules(max_prompt_length=100), now=T0)
    with pytest.raises(InvalidInput, match="NUL"):
        await service.move_credits(storage, "testUser2", 3, "promo\x00", T0)
    assert await balance(storage, "testUser1") == 100 and await balance(storage, "testUser2") == 10
    assert (await storage.list_requests(None, None, 10, None)).items == []


async def test_canceling_a_running_request_refunds_it_and_a_second_cancel_is_an_invalid_state(
    storage: Storage,
) -> None:
    await enqueue(storage)
    job = await claim(storage, "w-1")

    assert (await service.cancel_generation(storage, job.id, T0)).status is Status.CANCELED

    with pytest.raises(InvalidState):
        await service.cancel_generation(storage, job.id, T0)
    assert await balance(storage, "testUser1") == 100


async def test_recovery_requeues_below_max_attempts_and_fails_and_refunds_at_max(storage: Storage) -> None:
    await enqueue(storage, size="1024x1024")
    now = T0
    for attempt in (1, 2):
        job = await claim(storage, f"w-{attempt}", now)
        assert job.attempts == attempt
        now += LEASE + MINUTE
        assert await jobs.recover_expired_jobs(storage, now, max_attempts=3) == jobs.Recovery(
            requeued=1, failed=0
        )
    await claim(storage, "w-3", now)

    recovery = await jobs.recover_expired_jobs(storage, now + LEASE + MINUTE, max_attempts=3)

    assert recovery == jobs.Recovery(requeued=0, failed=1)
    failed = await storage.get_request(job.id)
    assert failed is not None and failed.status is Status.FAILED
    assert await balance(storage, "testUser1") == 100
    refunded = {EntryType.DEDUCTION: 1, EntryType.REFUND: 1}
    assert await entries_for(storage, "testUser1", job.id) == refunded
    assert await jobs.recover_expired_jobs(storage, now + 10 * LEASE, max_attempts=3) == jobs.Recovery(0, 0)
    assert await storage.violations() == []


async def test_run_report_stores_a_report_that_can_be_read_back(storage: Storage) -> None:
    await requests_around_week_47(storage)
    assert await storage.get_report("2026-W47") is None

    document = await service.run_report(storage, W47, W47.end + timedelta(hours=1))

    assert await storage.get_report("2026-W47") == document
    assert await service.get_report(storage, "2026-W47") == document
    expected = {
        "id": "2026-W47",
        "periodStart": "2026-11-16T00:00:00Z",
        "periodEnd": "2026-11-23T00:00:00Z",
        "totalRequests": 5,
        "completedRequests": 2,
        "failedRequests": 1,
        "totalCreditsSpent": 4,
        "totalCreditsRefunded": 1,
        "successRate": 66.67,
        "uniqueUsers": 2,
    }
    assert {key: document[key] for key in expected} == expected
    assert document["byModel"]["model-b"] == {
        "total": 1,
        "completed": 0,
        "failed": 1,
        "failureRate": 100.0,
        "creditsSpent": 0,
        "creditsRefunded": 1,
    }


async def test_a_finding_marked_expected_stays_on_its_report_and_is_withheld_the_next_week(
    storage: Storage,
) -> None:
    weeks = [*reports.weeks_before(W47, 3), W47, reports.iso_week("2026-W48")]
    for week, count in zip(weeks, (2, 2, 2, 8, 8), strict=True):
        for hour in range(count):
            await finished(storage, Status.COMPLETED, week.start + timedelta(hours=hour + 1))
    for week in weeks[:3]:
        await service.run_report(storage, week, week.end, thresholds=LOOSE)
    spike = await service.run_report(storage, W47, W47.end, thresholds=LOOSE)
    assert [a["metric"] for a in spike["anomalies"]] == ["totalRequests"]

    marked = await service.mark_expected(
        storage, "2026-W47", reports.FindingId("totalRequests"), "a launch", W47.end + timedelta(hours=2)
    )

    assert marked["mark"]["note"] == "a launch"
    again = await service.run_report(storage, W47, W47.end + timedelta(hours=3), thresholds=LOOSE)
    assert again["anomalies"][0]["mark"]["note"] == "a launch"  # a re-run keeps the mark
    assert await storage.get_report("2026-W47") == again
    after = await service.run_report(storage, weeks[-1], weeks[-1].end, thresholds=LOOSE)
    assert after["anomalies"] == []
    assert [(a["metric"], a["mark"]["reportId"]) for a in after["expectedAnomalies"]] == [
        ("totalRequests", "2026-W47")
    ]


async def test_marking_a_finding_a_report_does_not_have_is_not_found(storage: Storage) -> None:
    await requests_around_week_47(storage)
    await service.run_report(storage, W47, W47.end)

    share = reports.FindingId("share", "style", "anime")
    with pytest.raises(NotFound, match="has no finding on share of style 'anime'"):
        await service.mark_expected(storage, "2026-W47", share, "", W47.end)
    with pytest.raises(NotFound, match="Report '2026-W01' not found"):
        await service.mark_expected(storage, "2026-W01", reports.FindingId("totalRequests"), "", W47.end)


async def test_running_a_report_again_gives_the_same_numbers(storage: Storage) -> None:
    await requests_around_week_47(storage)
    first = await service.run_report(storage, W47, W47.end + timedelta(hours=1))

    again = await service.run_report(storage, W47, W47.end + timedelta(days=1))

    assert again["generatedAt"] != first["generatedAt"]
    assert {k: v for k, v in again.items() if k != "generatedAt"} == {
        k: v for k, v in first.items() if k != "generatedAt"
    }
    assert await storage.get_report("2026-W47") == again
