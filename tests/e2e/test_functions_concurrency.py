"""Many Cloud Functions instances on one Firestore: creates from many users, one hot user, duplicates.

Cloud Functions runs one request at a time per instance, so concurrent clients mean concurrent
instances: here four functions-framework processes of createGenerationRequest (THREADS=1) on the
session's emulator, each with its own clients and caches. A quarter of the generations fail by
design (AI_FAILURE_RATE=0.25): their 500 is the case study's refund answer, and the only 5xx allowed.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("google.cloud.firestore", reason="the Cloud Functions tests need google-cloud-firestore")
pytest.importorskip("functions_framework", reason="the Cloud Functions tests need functions-framework")

from imagegen import service
from imagegen.api.answers import FAILED_MESSAGE
from imagegen.clock import utcnow
from imagegen.domain.errors import TooManyRequests
from imagegen.domain.generation import NewGeneration, Status
from imagegen.domain.ledger import EntryType
from imagegen.ports import Lease
from imagegen.storage.firestore import FirestoreStorage
from tests.e2e.functions_support import PREFIX, Function, function_env
from tests.firestore_emulator import PROJECT
from tests.integration.builders import new_generation
from tests.support import GENERATION

pytestmark = pytest.mark.slow

INSTANCES = 4
IN_FLIGHT_LIMIT = 2  # below the instances: a hot user meets it


def start_instances(emulator: str, folder: Path, count: int, **settings: str) -> list[Function]:
    env = function_env(emulator, folder) | {
        "AI_FAILURE_RATE": "0.25",
        "IMAGEGEN_MAX_IN_FLIGHT_PER_USER": str(IN_FLIGHT_LIMIT),
        "IMAGEGEN_PUBLIC_URL": "http://127.0.0.1:1",
        **settings,
    }
    started = [Function("createGenerationRequest", folder, env) for _ in range(count)]
    for function in started:
        function.wait()
    return started


def stop_instances(started: list[Function]) -> None:
    for function in started:
        function.terminate()
    for function in started:
        function.stop()


def create_url(function: Function) -> str:
    return f"{function.url}{PREFIX}/createGenerationRequest"


@pytest.fixture(scope="module")
def instances(firestore_emulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    started = start_instances(firestore_emulator, tmp_path_factory.mktemp("instances"), INSTANCES)
    try:
        yield [create_url(function) for function in started]
    finally:
        stop_instances(started)


@pytest.fixture
async def firestore(firestore_clean: str) -> AsyncIterator[FirestoreStorage]:
    storage = FirestoreStorage(PROJECT)
    await storage.migrate()
    await service.first_start(storage, utcnow())
    yield storage
    await storage.close()


async def user_with_key(storage: FirestoreStorage, user_id: str, credits: int) -> str:
    _, issued = await service.create_user(storage, user_id, credits, utcnow())
    return issued.key


def concurrently(calls: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    barrier = threading.Barrier(min(calls, 8), timeout=60)

    def start(n: int) -> httpx.Response:
        if n < 8:
            barrier.wait()  # the first wave leaves together
        return call(n)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(start, range(calls)))


def post(url: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=120)


async def assert_designed(response: httpx.Response, storage: FirestoreStorage) -> None:
    """200 done, or the designed model failure (500, refunded); either way the request's id."""
    body = response.json()
    assert response.status_code in (200, 500), response.text
    request = await storage.get_request(body["generationRequestId"])
    assert request is not None
    if response.status_code == 500:
        assert body["error"] == FAILED_MESSAGE
        assert request.status is Status.FAILED
    else:
        assert request.status is Status.COMPLETED


async def assert_nothing_in_flight(storage: FirestoreStorage, user_id: str) -> None:
    """The user's count of requests in flight is back to 0: exactly the limit's worth may queue."""

    def limited() -> NewGeneration:
        return replace(new_generation(user_id, created_at=utcnow()), max_in_flight=IN_FLIGHT_LIMIT)

    for _ in range(IN_FLIGHT_LIMIT):
        await storage.debit_and_enqueue(limited())
    with pytest.raises(TooManyRequests):
        await storage.debit_and_enqueue(limited())


async def test_many_users_on_many_instances_get_their_image_or_the_designed_refund(
    instances: list[str], firestore: FirestoreStorage
) -> None:
    users = [f"spread-{n}" for n in range(8)]
    keys = {user: await user_with_key(firestore, user, 50) for user in users}

    def create(n: int) -> httpx.Response:
        user = users[n % len(users)]
        return post(instances[n % INSTANCES], keys[user], {**GENERATION, "userId": user})

    answers = concurrently(32, create)

    for answer in answers:
        await assert_designed(answer, firestore)
    for n, user in enumerate(users):
        completed = sum(answer.status_code == 200 for answer in answers[n :: len(users)])
        assert (await firestore.get_user(user)).credits == 50 - completed  # type: ignore[union-attr]
        await assert_nothing_in_flight(firestore, user)
    assert await service.verify(firestore) == []


async def test_a_hot_user_gets_an_image_insufficient_credits_or_429_never_a_contention_error(
    instances: list[str], firestore: FirestoreStorage
) -> None:
    key = await user_with_key(firestore, "hot", 12)

    answers = concurrently(40, lambda n: post(instances[n % INSTANCES], key, {**GENERATION, "userId": "hot"}))

    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 400, 429, 500}, statuses
    assert statuses[200] > 0
    for answer in answers:
        if answer.status_code in (200, 500):
            await assert_designed(answer, firestore)
        elif answer.status_code == 400:
            assert "Insufficient credits" in answer.json()["error"]
        else:
            assert answer.headers["Retry-After"] == "1"
            assert answer.json()["code"] == "rate_limited"
    assert (await firestore.get_user("hot")).credits == 12 - statuses[200]  # type: ignore[union-attr]
    await firestore.move_credits("hot", EntryType.GRANT, IN_FLIGHT_LIMIT + 1, "for the check", utcnow())
    await assert_nothing_in_flight(firestore, "hot")
    assert await service.verify(firestore) == []


async def test_one_idempotency_key_sent_to_every_instance_at_once_debits_once_and_answers_alike(
    instances: list[str], firestore: FirestoreStorage
) -> None:
    key = await user_with_key(firestore, "careful", 10)
    body = {**GENERATION, "userId": "careful"}

    answers = concurrently(
        8, lambda n: post(instances[n % INSTANCES], key, body, **{"Idempotency-Key": "k-1"})
    )

    # Alike but for `requestId`, which names each HTTP request (the replays included).
    alike = {(answer.status_code, json.dumps({**answer.json(), "requestId": None})) for answer in answers}
    assert len(alike) == 1, [a.text for a in answers]
    await assert_designed(answers[0], firestore)
    request = await firestore.get_request(answers[0].json()["generationRequestId"])
    assert request is not None
    spent = 1 if request.status is Status.COMPLETED else 0
    assert (await firestore.get_user("careful")).credits == 10 - spent  # type: ignore[union-attr]
    assert await service.verify(firestore) == []


async def test_a_create_that_cannot_finish_in_time_answers_202_with_its_request(
    firestore_emulator: str, firestore: FirestoreStorage, tmp_path: Path
) -> None:
    key = await user_with_key(firestore, "patient", 10)
    body = {**GENERATION, "userId": "patient"}
    now = utcnow()
    # The first create of this key is running in an instance that is still at it (its lease holds).
    new = service.prepare_generation(await firestore.catalog(), body, now=now, idempotency_key="k-2")
    first, _ = await firestore.debit_and_enqueue(
        new, claim=Lease("busy-instance", now + timedelta(minutes=5))
    )
    [instance] = start_instances(firestore_emulator, tmp_path, 1, IMAGEGEN_WAIT_TIMEOUT_SECONDS="0.5")
    try:
        replay = post(create_url(instance), key, body, **{"Idempotency-Key": "k-2"})
    finally:
        stop_instances([instance])

    assert replay.status_code == 202, replay.text
    assert (replay.json()["generationRequestId"], replay.json()["status"]) == (first.id, "running")
    assert (await firestore.get_user("patient")).credits == 9  # type: ignore[union-attr]
    assert await service.verify(firestore) == []
