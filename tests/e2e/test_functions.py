"""The Cloud Functions (functions/main.py), served by functions-framework against the Firestore emulator.

Runs the case study's curl flow (create, credits, refund on failure, the weekly report triggered by a
POST as Cloud Scheduler sends it) and checks that the errors are the SQL deployment's, byte for byte.
One functions-framework process per function, started once for the module; the emulator is emptied
and loaded with the initial data set before each test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

pytest.importorskip("google.cloud.firestore", reason="the Cloud Functions tests need google-cloud-firestore")
pytest.importorskip("firebase_functions", reason="the Cloud Functions tests need firebase-functions")
pytest.importorskip("functions_framework", reason="the Cloud Functions tests need functions-framework")

from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.domain.generation import Status
from imagegen.ports import Lease
from imagegen.storage.firestore import FirestoreStorage
from tests.e2e.functions_support import PREFIX, Function, function_env
from tests.firestore_emulator import PROJECT
from tests.integration.builders import LEASE, new_generation
from tests.support import GENERATION, ServerFactory

pytestmark = pytest.mark.slow


TARGETS = ("createGenerationRequest", "getUserCredits", "scheduleWeeklyReport", "runWeeklyReports")
TARGETS += ("sweepGenerationJobs", "images")


@pytest.fixture(scope="module")
def functions(firestore_emulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Base URLs by function name; `failingCreate` is createGenerationRequest with AI_FAILURE_RATE=1,
    `deployedCreate` the same function with the environment it has when deployed."""
    folder = tmp_path_factory.mktemp("functions")
    env = function_env(firestore_emulator, folder)
    images = Function("images", folder, env)
    env["IMAGEGEN_PUBLIC_URL"] = images.url
    started = {"images": images}
    started |= {target: Function(target, folder, env) for target in TARGETS if target != "images"}
    started["failingCreate"] = Function("createGenerationRequest", folder, {**env, "AI_FAILURE_RATE": "1"})
    # As deployed: Cloud Run's K_SERVICE, the project from the Firebase CLI, no IMAGEGEN_PUBLIC_URL.
    deployed = {key: value for key, value in env.items() if key != "IMAGEGEN_PUBLIC_URL"}
    deployed |= {"K_SERVICE": "createGenerationRequest", "GCLOUD_PROJECT": PROJECT}
    started["deployedCreate"] = Function("createGenerationRequest", folder, deployed)
    try:
        for function in started.values():
            function.wait()
        yield {name: function.url for name, function in started.items()}
    finally:
        for function in started.values():
            function.terminate()  # all at once: each takes a moment to shut down
        for function in started.values():
            function.stop()


@pytest.fixture
async def firestore(firestore_clean: str) -> AsyncIterator[FirestoreStorage]:
    storage = FirestoreStorage(PROJECT)
    await storage.migrate()
    yield storage
    await storage.close()


@pytest.fixture
async def keys(firestore: FirestoreStorage) -> dict[str, str]:
    first = await service.first_start(firestore, utcnow())
    assert first is not None
    return {"admin": first.admin_key, **first.user_keys}


def call(base: str, name: str, key: str | None, method: str = "GET", **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers |= kwargs.pop("headers", {})
    return httpx.request(method, f"{base}{PREFIX}/{name}", headers=headers, timeout=60, **kwargs)


def create(
    functions: dict[str, str], key: str | None, body: Any, *, failing: bool = False, **kw: Any
) -> httpx.Response:
    base = functions["failingCreate" if failing else "createGenerationRequest"]
    return call(base, "createGenerationRequest", key, "POST", json=body, **kw)


def credits(functions: dict[str, str], key: str | None, user_id: str, **params: str) -> httpx.Response:
    return call(functions["getUserCredits"], "getUserCredits", key, params={"userId": user_id, **params})


# -- the case study's flow ----------------------------------------------------------------------------
async def test_a_generation_is_debited_run_inline_and_listed_in_the_ledger(
    functions: dict[str, str], keys: dict[str, str], firestore: FirestoreStorage
) -> None:
    created = create(functions, keys["testUser1"], GENERATION)

    assert created.status_code == 200, created.text
    body = created.json()
    assert (body["deductedCredits"], body["status"]) == (1, "completed")
    assert body["imageUrl"] == f"{functions['images']}/images/{body['generationRequestId']}.png"
    image = httpx.get(body["imageUrl"], timeout=30)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

    ledger = credits(functions, keys["testUser1"], "testUser1")
    assert ledger.status_code == 200
    assert ledger.json()["currentCredits"] == 99
    [deduction, grant] = ledger.json()["transactions"]
    assert (deduction["type"], deduction["credits"], deduction["generationRequestId"]) == (
        "deduction",
        1,
        body["generationRequestId"],
    )
    assert (grant["type"], grant["credits"]) == ("grant", 100)
    assert await service.verify(firestore) == []


async def test_deployed_the_image_url_is_the_images_functions_own_url(
    functions: dict[str, str], keys: dict[str, str]
) -> None:
    created = call(
        functions["deployedCreate"], "createGenerationRequest", keys["testUser1"], "POST", json=GENERATION
    )

    assert created.status_code == 200, created.text
    image_id = created.json()["generationRequestId"]
    assert (
        created.json()["imageUrl"]
        == f"https://us-central1-{PROJECT}.cloudfunctions.net/images/{image_id}.png"
    )
    # Cloud Functions hands the images function the path after its name: /<id>.png
    image = httpx.get(f"{functions['images']}/{image_id}.png", timeout=30)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


async def test_a_failed_generation_answers_500_and_is_refunded_once(
    functions: dict[str, str], keys: dict[str, str], firestore: FirestoreStorage
) -> None:
    failed = create(functions, keys["testUser1"], {**GENERATION, "size": "1024x1024"}, failing=True)

    assert failed.status_code == 500
    body = failed.json()
    assert body["error"] == "AI generation failed, credits refunded."
    assert (body["status"], body["deductedCredits"]) == ("failed", 3)
    ledger = credits(functions, keys["testUser1"], "testUser1").json()
    assert ledger["currentCredits"] == 100
    assert [(t["type"], t["credits"]) for t in ledger["transactions"]] == [
        ("refund", 3),
        ("deduction", 3),
        ("grant", 100),
    ]
    request = await firestore.get_request(body["generationRequestId"])
    assert request is not None and request.status is Status.FAILED
    assert await service.verify(firestore) == []


async def test_a_retry_with_the_same_idempotency_key_replays_and_debits_once(
    functions: dict[str, str], keys: dict[str, str]
) -> None:
    headers = {"Idempotency-Key": "double-click"}
    first = create(functions, keys["testUser1"], GENERATION, headers=headers)
    again = create(functions, keys["testUser1"], GENERATION, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.json()["generationRequestId"] == first.json()["generationRequestId"]
    assert credits(functions, keys["testUser1"], "testUser1").json()["currentCredits"] == 99


async def test_the_ledger_pages_with_a_cursor(functions: dict[str, str], keys: dict[str, str]) -> None:
    for _ in range(2):
        assert create(functions, keys["testUser2"], {**GENERATION, "userId": "testUser2"}).status_code == 200

    first = credits(functions, keys["testUser2"], "testUser2", limit="2").json()
    rest = credits(functions, keys["testUser2"], "testUser2", limit="2", cursor=first["nextCursor"]).json()

    assert [t["type"] for t in first["transactions"]] == ["deduction", "deduction"]
    assert [t["type"] for t in rest["transactions"]] == ["grant"]
    assert rest["nextCursor"] is None


# -- errors: the SQL deployment's, byte for byte ----------------------------------------------------------
ERROR_CASES = [
    ("missing-fields", "user", {"userId": "testUser1"}),
    ("invalid-model", "user", {**GENERATION, "model": "model-z"}),
    ("invalid-size", "user", {**GENERATION, "size": "3x3"}),
    ("not-an-object", "user", ["a", "list"]),
    ("unknown-user", "admin", {**GENERATION, "userId": "nobody"}),
    ("other-user", "user", {**GENERATION, "userId": "testUser2"}),
    ("no-key", None, GENERATION),
    ("bad-key", "ig_not-a-key", GENERATION),
]


@pytest.fixture(scope="module")
def sql_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    factory = ServerFactory(tmp_path_factory.mktemp("sql"))
    server = factory.start()
    try:
        yield server.url, server.keys()
    finally:
        factory.stop_all()


@pytest.mark.parametrize(("case", "who", "body"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
async def test_create_errors_are_the_sql_deployments(
    functions: dict[str, str],
    keys: dict[str, str],
    sql_deployment: tuple[str, dict[str, str]],
    case: str,
    who: str | None,
    body: Any,
) -> None:
    sql_url, sql_keys = sql_deployment

    def key(keyring: dict[str, str]) -> str | None:
        return {"user": keyring["testUser1"], "admin": keyring["admin"]}.get(who or "", who)

    on_functions = create(functions, key(keys), body)
    on_sql = httpx.post(
        f"{sql_url}/createGenerationRequest",
        json=body,
        headers={"Authorization": f"Bearer {key(sql_keys)}"} if key(sql_keys) else {},
        timeout=30,
    )

    assert on_functions.status_code == on_sql.status_code
    assert on_functions.json() == on_sql.json()


async def test_insufficient_credits_is_a_400_and_debits_nothing(
    functions: dict[str, str], keys: dict[str, str]
) -> None:
    body = {**GENERATION, "userId": "testUser2", "size": "1024x1792"}  # 4 credits of 10
    assert [create(functions, keys["testUser2"], body).status_code for _ in range(2)] == [200, 200]

    refused = create(functions, keys["testUser2"], body)

    assert refused.status_code == 400
    assert "Insufficient credits" in refused.json()["error"]
    assert credits(functions, keys["testUser2"], "testUser2").json()["currentCredits"] == 2


async def test_get_user_credits_errors(functions: dict[str, str], keys: dict[str, str]) -> None:
    base = functions["getUserCredits"]
    assert call(base, "getUserCredits", keys["testUser1"]).status_code == 400
    assert credits(functions, keys["admin"], "nobody").json()["error"] == "User not found"
    assert credits(functions, keys["testUser1"], "testUser2").status_code == 403
    assert credits(functions, None, "testUser1").status_code == 401
    assert call(base, "getUserCredits", keys["testUser1"], "POST").status_code == 405


# -- reports: the scheduled function, triggered as Cloud Scheduler does (an HTTP POST), and the curl -------
async def test_the_scheduled_weekly_report_triggered_by_post_reports_the_week(
    functions: dict[str, str], keys: dict[str, str], firestore: FirestoreStorage
) -> None:
    assert create(functions, keys["testUser1"], GENERATION).status_code == 200
    assert create(functions, keys["testUser1"], GENERATION, failing=True).status_code == 500
    week = reports.week_of(utcnow())  # reported by the run at the Monday that ends it
    scheduled_at = week.end.isoformat().replace("+00:00", "Z")

    fired = httpx.post(
        f"{functions['runWeeklyReports']}/",
        headers={"X-CloudScheduler-ScheduleTime": scheduled_at, "X-CloudScheduler-JobName": "weekly"},
        timeout=60,
    )

    assert fired.status_code == 200, fired.text
    stored = await firestore.get_report(week.id)
    assert stored is not None
    assert {k: stored[k] for k in ("totalRequests", "completedRequests", "failedRequests")} == {
        "totalRequests": 2,
        "completedRequests": 1,
        "failedRequests": 1,
    }
    assert (stored["totalCreditsSpent"], stored["totalCreditsRefunded"], stored["successRate"]) == (
        1,
        1,
        50.0,
    )
    again = httpx.post(
        f"{functions['runWeeklyReports']}/",
        headers={"X-CloudScheduler-ScheduleTime": scheduled_at},
        timeout=60,
    )
    assert again.status_code == 200
    assert await firestore.get_report(week.id) == stored  # claimed once: a duplicate trigger changes nothing

    manual = call(
        functions["scheduleWeeklyReport"], "scheduleWeeklyReport", keys["admin"], params={"week": week.id}
    )
    assert manual.status_code == 200
    assert manual.json()["totalRequests"] == 2
    assert (
        call(functions["scheduleWeeklyReport"], "scheduleWeeklyReport", keys["testUser1"]).status_code == 403
    )


# -- the sweeper: invariant 4 without background workers -------------------------------------------------
async def test_the_sweeper_finishes_jobs_whose_invocation_died(
    functions: dict[str, str], keys: dict[str, str], firestore: FirestoreStorage
) -> None:
    long_ago = utcnow() - timedelta(hours=1)
    crashed, _ = await firestore.debit_and_enqueue(new_generation(created_at=long_ago))
    assert await firestore.claim_job(Lease("dead-invocation", long_ago + LEASE), long_ago) is not None
    queued, _ = await firestore.debit_and_enqueue(new_generation(created_at=utcnow()))

    swept = httpx.post(f"{functions['sweepGenerationJobs']}/", timeout=60)

    assert swept.status_code == 200, swept.text
    for request_id in (crashed.id, queued.id):
        request = await firestore.get_request(request_id)
        assert request is not None and request.status is Status.COMPLETED
    assert (await firestore.get_request(crashed.id)).attempts == 2  # type: ignore[union-attr]
    assert await service.verify(firestore) == []


# -- the instance's cache of the catalog and the keys: edits made elsewhere apply to the next create ------
async def test_a_warm_instance_prices_refuses_and_revokes_as_the_database_says_on_the_next_create(
    functions: dict[str, str], keys: dict[str, str], firestore: FirestoreStorage
) -> None:
    issued = await service.issue_key(firestore, "testUser1", utcnow())
    key_id, key = issued.id, issued.key
    before = create(functions, key, GENERATION)  # the instance now holds the catalog and the key
    await service.set_option(firestore, "sizes", "512x512", enabled=True, cost=7)
    repriced = create(functions, key, GENERATION)
    await service.set_option(firestore, "styles", "anime", enabled=False, cost=None)
    disabled = create(functions, key, GENERATION)
    await service.set_option(firestore, "styles", "pixel art", enabled=True, cost=None)
    added = create(functions, key, {**GENERATION, "style": "pixel art"})
    await firestore.revoke_api_key(key_id, utcnow())
    revoked = create(functions, key, {**GENERATION, "style": "pixel art"})

    assert (before.status_code, before.json()["deductedCredits"]) == (200, 1)
    assert (repriced.status_code, repriced.json()["deductedCredits"]) == (200, 7)
    assert disabled.status_code == 400 and "Invalid style 'anime'" in disabled.json()["error"]
    assert (added.status_code, added.json()["deductedCredits"]) == (200, 7)
    assert revoked.status_code == 401
    assert credits(functions, keys["testUser1"], "testUser1").json()["currentCredits"] == 100 - 1 - 7 - 7
    assert await service.verify(firestore) == []
