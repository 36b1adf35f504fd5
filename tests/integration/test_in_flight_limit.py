"""The per-user in-flight limit, on every storage backend: queued + running, never more."""

from __future__ import annotations

from datetime import timedelta

import pytest

from imagegen import service
from imagegen.clock import utcnow
from imagegen.errors import TooManyRequests
from imagegen.ports import Storage

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
