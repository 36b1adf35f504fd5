"""The per-user in-flight limit, on every storage backend: queued + running, never more."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain.errors import InsufficientCredits, TooManyRequests
from imagegen.ports import Storage
from imagegen.storage.firestore.adapter import FirestoreStorage

BODY = {"userId": "testUser1", "model": "model-a", "style": "anime", "color": "vibrant", "size": "512x512"}


def create(storage: Storage, limit: int) -> str:
    request, _ = service.create_generation(
        storage, BODY, max_prompt_length=100, now=utcnow(), max_in_flight=limit
    )
    return request.id


def test_the_in_flight_limit_refuses_without_debiting_and_frees_a_place_when_a_request_ends(
    storage: Storage,
) -> None:
    ids = [create(storage, limit=3) for _ in range(3)]
    with pytest.raises(TooManyRequests):
        create(storage, limit=3)
    assert storage.get_user("testUser1").credits == 97  # type: ignore[union-attr]

    now = utcnow()
    job = storage.claim_job("w", now, now + timedelta(seconds=30))
    assert job is not None
    assert storage.complete(job.id, "w", "/images/x.png", now)  # completed: no longer in flight
    create(storage, limit=3)
    with pytest.raises(TooManyRequests):
        create(storage, limit=3)

    assert storage.cancel_and_refund(ids[1], now)  # canceled: no longer in flight
    job = storage.claim_job("w", now, now + timedelta(seconds=30))
    assert job is not None
    assert storage.fail_and_refund(job.id, "boom", now, worker_id="w")  # failed: no longer in flight
    create(storage, limit=3)
    create(storage, limit=3)
    with pytest.raises(TooManyRequests):
        create(storage, limit=3)
    assert list(service.verify(storage)) == []


def test_a_create_refused_at_the_in_flight_limit_is_a_429_even_while_jobs_end_around_it(
    storage: Storage,
) -> None:
    """Creates at the limit race workers that end jobs: a refusal is a 429 whenever the limit is its
    reason, never "insufficient credits" for a user with plenty (the reason is judged on the row
    the refused debit saw, not on one read after a job freed a place)."""
    emulated = isinstance(storage, FirestoreStorage)  # the emulator: tens of ms a transaction
    attempts = 16 if emulated else 600
    storage.create_user("racer", 1_000_000, utcnow())
    body = {**BODY, "userId": "racer"}
    outcomes: Counter[str] = Counter()
    done = threading.Event()

    def creating() -> None:
        for _ in range(attempts // 2):
            try:
                service.create_generation(storage, body, max_prompt_length=100, now=utcnow(), max_in_flight=2)
                outcomes["created"] += 1
            except TooManyRequests:
                outcomes["429"] += 1
            except InsufficientCredits:
                outcomes["402"] += 1

    def ending() -> None:
        while not done.is_set():
            now = utcnow()
            job = storage.claim_job("w", now, now + timedelta(seconds=30))
            if job is not None:
                storage.complete(job.id, "w", "/images/x.png", now)
            elif emulated:
                time.sleep(0.01)

    with ThreadPoolExecutor(4) as pool:
        enders = [pool.submit(ending) for _ in range(1 if emulated else 2)]
        creators = [pool.submit(creating) for _ in range(2)]
        for future in creators:
            future.result()
        done.set()
        for future in enders:
            future.result()
    assert outcomes["402"] == 0, outcomes
    assert outcomes["created"] > 0 and outcomes["created"] + outcomes["429"] == attempts
    assert list(service.verify(storage)) == []
