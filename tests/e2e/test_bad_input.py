"""Every class of bad input gets a 4xx with a clear message, and nothing is written.

One server serves the whole module (starting one per case would cost seconds each); every test takes a
snapshot of the balances, the ledger and the request table before and compares it after.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.helpers import create_user, credits_of, query_db, request_count
from tests.support import GENERATION, Server, ServerFactory

CREATE = "/createGenerationRequest"
EMULATOR_CREATE = "/demo-case-study/us-central1/createGenerationRequest"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def keys(server: Server) -> dict[str, str]:
    return server.keys()


def _state(server: Server) -> tuple[Any, ...]:
    with server.client(server.keys()["admin"]) as admin:
        ledgers = [credits_of(admin, user_id) for user_id in ("testUser1", "testUser2")]
    users = query_db(server.data_dir, "SELECT id, credits FROM users ORDER BY id")
    entries = query_db(server.data_dir, "SELECT count(*) FROM ledger_entries")
    return ledgers, users, entries, request_count(server.data_dir)


@contextmanager
def nothing_written(server: Server) -> Iterator[None]:
    before = _state(server)
    yield
    assert _state(server) == before, "a refused request changed the database"


def _post(server: Server, key: str | None, path: str, **kwargs: Any) -> httpx.Response:
    # A fresh connection per call: a server that answers 500 may close a kept-alive one.
    with server.client(key) as client:
        return client.post(path, **kwargs)


def _error(response: httpx.Response) -> str:
    message: str = response.json()["error"]
    return message


# -- the body of createGenerationRequest ---------------------------------------------------------
STYLES = "anime, cyberpunk, oil painting, realistic, sketch, watercolor"
COLORS = "monochrome, neon, pastel, vibrant, vintage"
SIZES = "512x512, 1024x1024, 1024x1792"
INVALID_BODIES = {
    "every field missing": ({}, ["Missing required fields: [userId, model, style, color, size]"]),
    "some fields missing": (
        {"userId": "testUser1", "model": "model-a"},
        ["Missing required fields: [style, color, size]"],
    ),
    "an empty field": ({**GENERATION, "style": ""}, ["Missing required fields: [style]"]),
    "a null userId": ({**GENERATION, "userId": None}, ["Missing required fields: [userId]"]),
    "an unknown model": ({**GENERATION, "model": "dall-e"}, ["Invalid model 'dall-e'", "model-a, model-b"]),
    "an unknown style": ({**GENERATION, "style": "pixel art"}, ["Invalid style 'pixel art'", STYLES]),
    "an unknown color": ({**GENERATION, "color": "plaid"}, ["Invalid color 'plaid'", COLORS]),
    "an unknown size": ({**GENERATION, "size": "2048x2048"}, ["Invalid size '2048x2048'", SIZES]),
    "a size of the wrong case": ({**GENERATION, "model": "MODEL-A"}, ["Invalid model 'MODEL-A'"]),
    "a number for prompt": ({**GENERATION, "prompt": 42}, ["Field 'prompt' must be a string"]),
    "a list for model": ({**GENERATION, "model": ["model-a"]}, ["Field 'model' must be a string"]),
    "an object for size": ({**GENERATION, "size": {"w": 512}}, ["Field 'size' must be a string"]),
    "a boolean for userId": ({**GENERATION, "userId": True}, ["Field 'userId' must be a string"]),
    "a prompt over the limit": ({**GENERATION, "prompt": "x" * 1001}, ["1001 characters", "limit is 1000"]),
    "a userId with a slash": ({**GENERATION, "userId": "test/User1"}, ["Invalid userId 'test/User1'"]),
    "a userId with a space": ({**GENERATION, "userId": "test User1"}, ["Invalid userId"]),
    "a userId with a newline": ({**GENERATION, "userId": "testUser1\n"}, ["Invalid userId"]),
    "a userId of 200 chars": ({**GENERATION, "userId": "u" * 200}, ["Invalid userId", "1-128 characters"]),
    "a JSON array": ([GENERATION], ["Request body must be a JSON object"]),
    "a JSON string": ("testUser1", ["Request body must be a JSON object"]),
    "a JSON number": (7, ["Request body must be a JSON object"]),
    "JSON null": (None, ["Request body must be a JSON object"]),
}


@pytest.mark.parametrize("body, phrases", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_an_invalid_generation_body_is_a_400_that_says_why_and_writes_nothing(
    server: Server, keys: dict[str, str], body: Any, phrases: list[str]
) -> None:
    with nothing_written(server):
        response = _post(server, keys["testUser1"], CREATE, content=json.dumps(body), headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"
    for phrase in phrases:
        assert phrase in _error(response)


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"userId": "testUser1",', b"\xff\xfe\x00", b""],
    ids=["text", "truncated JSON", "not UTF-8", "empty"],
)
def test_a_body_that_is_not_json_is_a_400_and_writes_nothing(
    server: Server, keys: dict[str, str], raw: bytes
) -> None:
    with nothing_written(server):
        response = _post(server, keys["testUser1"], EMULATOR_CREATE, content=raw, headers=JSON)
    assert response.status_code == 400, response.text
    assert "JSON object" in _error(response)


def test_an_invalid_field_lists_every_problem_at_once(server: Server, keys: dict[str, str]) -> None:
    body = {**GENERATION, "model": "nope", "color": "plaid"}
    with nothing_written(server):
        response = _post(server, keys["testUser1"], CREATE, json=body)
    assert response.status_code == 400
    problems = {p["field"]: p for p in response.json()["errors"]}
    assert set(problems) == {"model", "color"}
    assert problems["model"]["allowed"] == ["model-a", "model-b"]


def test_an_unknown_user_is_a_404_user_not_found(server: Server, keys: dict[str, str]) -> None:
    with nothing_written(server):
        response = _post(server, keys["admin"], CREATE, json={**GENERATION, "userId": "ghost"})
    assert response.status_code == 404, response.text
    assert _error(response) == "User not found"


def test_a_key_for_another_user_is_a_403_and_writes_nothing(server: Server, keys: dict[str, str]) -> None:
    with nothing_written(server):
        response = _post(server, keys["testUser2"], CREATE, json=GENERATION)  # GENERATION is testUser1's
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"


def test_a_user_key_naming_an_unknown_user_is_a_403_not_a_hint_that_the_user_is_missing(
    server: Server, keys: dict[str, str]
) -> None:
    with nothing_written(server):
        response = _post(server, keys["testUser1"], CREATE, json={**GENERATION, "userId": "ghost"})
    assert response.status_code == 403


def test_insufficient_credits_is_a_400_and_writes_nothing(server: Server) -> None:
    key = create_user(server, "broke", 2)
    with nothing_written(server):
        response = _post(server, key, CREATE, json={**GENERATION, "userId": "broke", "size": "1024x1024"})
    assert response.status_code == 400, response.text
    assert _error(response) == "Insufficient credits"
    with server.client(key) as client:
        assert credits_of(client, "broke")["currentCredits"] == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["declared length", "chunked"])
def test_a_body_over_the_size_limit_is_a_413_and_writes_nothing(
    server: Server, keys: dict[str, str], chunked: bool
) -> None:
    padded = json.dumps({**GENERATION, "padding": "x" * 70_000}).encode()
    content: Any = iter([padded[:1000], padded[1000:]]) if chunked else padded
    with nothing_written(server):
        response = _post(server, keys["testUser1"], CREATE, content=content, headers=JSON)
    assert response.status_code == 413, response.text
    assert "65536 bytes" in _error(response)


def test_a_body_over_the_size_limit_on_v1_is_a_413_problem(server: Server, keys: dict[str, str]) -> None:
    body = {"userId": "big", "credits": 1, "padding": "x" * 70_000}
    with nothing_written(server):
        response = _post(server, keys["admin"], "/v1/admin/users", json=body)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "body_too_large"


def test_unknown_fields_are_ignored_and_the_request_has_the_catalog_cost_and_lifecycle(
    server: Server, keys: dict[str, str]
) -> None:
    forged = {"cost": 0, "status": "completed", "id": "x", "imageUrl": "http://evil.example/x.png"}
    body = {**GENERATION, "size": "1024x1792", **forged, "deductedCredits": 0}
    with server.client(keys["testUser1"]) as client:
        before = credits_of(client, "testUser1")["currentCredits"]
        response = client.post(CREATE, json=body)
        assert response.status_code == 200, response.text
        created = response.json()
        assert created["deductedCredits"] == 4
        assert created["generationRequestId"] != "x"
        assert created["imageUrl"].startswith(server.url)
        assert credits_of(client, "testUser1")["currentCredits"] == before - 4
    columns = "cost, status, attempts, started_at IS NOT NULL, image_url"
    sql = f"SELECT {columns} FROM generation_requests WHERE id = ?"
    (row,) = query_db(server.data_dir, sql, created["generationRequestId"])
    cost, status, attempts, started, image_url = row
    assert (cost, status, attempts, started) == (4, "completed", 1, 1)  # a worker claimed and ran it
    assert "evil" not in image_url
    assert query_db(server.data_dir, "SELECT count(*) FROM generation_requests WHERE id = 'x'") == [(0,)]


def test_the_prompt_and_body_limits_are_settings(servers: ServerFactory) -> None:
    server = servers.start(IMAGEGEN_MAX_PROMPT_LENGTH="10", IMAGEGEN_MAX_BODY_BYTES="2048")
    key = server.keys()["testUser1"]
    with nothing_written(server):
        long_prompt = _post(server, key, CREATE, json={**GENERATION, "prompt": "x" * 11})
        big_body = _post(server, key, CREATE, json={**GENERATION, "prompt": "", "padding": "x" * 2048})
    assert long_prompt.status_code == 400 and "the limit is 10" in _error(long_prompt)
    assert big_body.status_code == 413 and "2048 bytes" in _error(big_body)
    assert _post(server, key, CREATE, json={**GENERATION, "prompt": "x" * 10}).status_code == 200


# -- other routes ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, phrase",
    [
        ({}, "userId"),
        ({"userId": ""}, "userId"),
        ({"userId": "a/b"}, "Invalid userId"),
        ({"userId": "testUser1", "limit": "0"}, "limit"),
        ({"userId": "testUser1", "limit": "201"}, "limit"),
        ({"userId": "testUser1", "limit": "ten"}, "limit"),
        ({"userId": "testUser1", "limit": "-1"}, "limit"),
        ({"userId": "testUser1", "cursor": "abc"}, "cursor"),
    ],
)
def test_bad_get_user_credits_parameters_are_a_400(
    server: Server, keys: dict[str, str], params: dict[str, str], phrase: str
) -> None:
    with server.client(keys["admin"]) as client:
        response = client.get("/getUserCredits", params=params)
    assert response.status_code == 400, response.text
    assert phrase in _error(response)


def test_get_user_credits_for_an_unknown_user_is_a_404(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["admin"]) as client:
        response = client.get("/getUserCredits", params={"userId": "ghost"})
    assert response.status_code == 404
    assert _error(response) == "User not found"


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/admin/users", {"userId": "a/b", "credits": 1}),
        ("/v1/admin/users", {"userId": "x", "credits": -1}),
        ("/v1/admin/users", {"userId": "x", "credits": "many"}),
        ("/v1/admin/users", {"credits": 1}),
        ("/v1/admin/users", ["x"]),
        ("/v1/admin/users/testUser1/credits", {"amount": 0, "reason": "nothing"}),
        ("/v1/admin/users/testUser1/credits", {"amount": 5, "reason": "   "}),
        ("/v1/admin/users/testUser1/credits", {"amount": 5}),
        ("/v1/admin/users/testUser1/credits", {"amount": 1.5, "reason": "half"}),
        ("/v1/admin/users/test User1/credits", {"amount": 5, "reason": "space"}),
    ],
)
def test_bad_admin_bodies_are_a_422_problem_and_write_nothing(
    server: Server, keys: dict[str, str], path: str, body: Any
) -> None:
    with nothing_written(server):
        response = _post(server, keys["admin"], path, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"


# -- auth on every route -----------------------------------------------------------------------
ROUTES = [
    ("POST", CREATE, GENERATION),
    ("POST", EMULATOR_CREATE, GENERATION),
    ("GET", "/getUserCredits?userId=testUser1", None),
    ("GET", "/demo-case-study/us-central1/getUserCredits?userId=testUser1", None),
    ("GET", "/scheduleWeeklyReport", None),
    ("POST", "/scheduleWeeklyReport", None),
    ("GET", "/v1/users/testUser1", None),
    ("POST", "/v1/admin/users", {"userId": "intruder", "credits": 1000}),
    ("POST", "/v1/admin/users/testUser1/credits", {"amount": 1000, "reason": "free money"}),
]
ADMIN_ROUTES = [route for route in ROUTES if "admin" in route[1] or "Report" in route[1]]
BAD_AUTH = {
    "no key": {},
    "an unknown key": {"Authorization": "Bearer ig_not-a-real-key"},
    "a bare scheme": {"Authorization": "Bearer"},
    "another scheme": {"Authorization": "Basic dGVzdFVzZXIxOg=="},
}


def _call(server: Server, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        return client.request(method, path, json=body)


@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
@pytest.mark.parametrize("method, path, body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_answers_401_without_a_valid_key_and_writes_nothing(
    server: Server, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    with nothing_written(server):
        response = _call(server, method, path, body, headers)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthenticated"
    if path.startswith("/v1"):
        assert response.headers["content-type"] == "application/problem+json"
    else:
        assert "API key" in _error(response)


def test_a_401_tells_the_client_to_use_a_bearer_token(server: Server) -> None:
    response = _call(server, "GET", "/v1/users/testUser1", None, {})
    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.parametrize("method, path, body", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_a_user_key_on_an_admin_route_is_a_403_and_writes_nothing(
    server: Server, keys: dict[str, str], method: str, path: str, body: Any
) -> None:
    with nothing_written(server):
        response = _call(server, method, path, body, {"Authorization": f"Bearer {keys['testUser1']}"})
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize(
    "path",
    [
        "/getUserCredits?userId=testUser2",
        "/demo-case-study/us-central1/getUserCredits?userId=testUser2",
        "/v1/users/testUser2",
    ],
)
def test_a_user_key_cannot_read_another_users_credits(
    server: Server, keys: dict[str, str], path: str
) -> None:
    response = _call(server, "GET", path, None, {"Authorization": f"Bearer {keys['testUser1']}"})
    assert response.status_code == 403, response.text


# -- never a 500 for what a client sent ------------------------------------------------------------
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _field(*good: str) -> st.SearchStrategy[Any]:
    return st.sampled_from(good) | ANY_JSON


GENERATION_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "userId": _field("fuzzer", "testUser2", "ghost", "", "a/b", "x" * 129),
        "model": _field("model-a", "model-b", "model-c"),
        "style": _field("anime", "sketch", "Anime"),
        "color": _field("neon", "pastel"),
        "size": _field("512x512", "0x0"),  # the smallest image: the fuzz is about input
        "prompt": _field("a cat", "", "p" * 1001),
        "cost": ANY_JSON,
        "status": ANY_JSON,
    },
)


@pytest.fixture(scope="module")
def fuzzer_key(server: Server) -> str:
    return create_user(server, "fuzzer", 1_000_000)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=GENERATION_LIKE | ANY_JSON)
def test_random_json_bodies_never_get_a_5xx(
    server: Server, keys: dict[str, str], fuzzer_key: str, body: Any
) -> None:
    data_dir: Path = server.data_dir
    before = request_count(data_dir)
    response = _post(server, keys["admin"], CREATE, content=json.dumps(body), headers=JSON)
    assert response.status_code < 500, (body, response.text)
    written = request_count(data_dir) - before
    assert written == (1 if response.status_code == 200 else 0), (body, response.status_code)


# -- inputs that once got a 500 (regression tests) ----------------------------------------------
def _assert_client_error(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text}"


@pytest.mark.parametrize("raw", [b"[" * 20_000, b'{"a":' * 10_000], ids=["arrays", "objects"])
def test_a_deeply_nested_json_body_is_a_400_not_a_500(
    server: Server, keys: dict[str, str], raw: bytes
) -> None:
    with nothing_written(server):
        response = _post(server, keys["testUser1"], CREATE, content=raw, headers=JSON)
    _assert_client_error(response)


@pytest.mark.parametrize("field", ["prompt", "style", "userId"])
def test_a_field_with_a_lone_surrogate_is_a_400_not_a_500(
    server: Server, keys: dict[str, str], field: str
) -> None:
    raw = json.dumps({**GENERATION, field: "cat \ud800"})  # json.dumps writes it as the escape \ud800
    with nothing_written(server):
        response = _post(server, keys["admin"], CREATE, content=raw, headers=JSON)
    _assert_client_error(response)


def test_a_limit_written_in_unicode_digits_is_a_400_not_a_500(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["testUser1"]) as client:
        response = client.get("/getUserCredits", params={"userId": "testUser1", "limit": "²"})
    _assert_client_error(response)


def test_a_cursor_beyond_64_bits_is_a_400_not_a_500(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["testUser1"]) as client:
        response = client.get("/getUserCredits", params={"userId": "testUser1", "cursor": "9" * 30})
    _assert_client_error(response)


def test_a_report_for_a_week_in_year_one_is_a_400_not_a_500(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["admin"]) as client:
        response = client.get("/scheduleWeeklyReport", params={"week": "0001-W01"})
    _assert_client_error(response)
