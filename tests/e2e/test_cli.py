"""The installed `imagegen` command: users, credits, export and import, verify, and the first start."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import assert_verified, credits_of, query_db, tamper_db, verify
from tests.support import GENERATION, ServerFactory, run_cli

BALANCES = "SELECT id, credits FROM users ORDER BY id"


def _dir(data_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir)]


def _create_user(data_dir: Path, user_id: str, credits: int) -> str:
    result = run_cli("users", "create", user_id, "--credits", str(credits), *_dir(data_dir))
    return result.stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data folder with some life in it: a CLI user, a grant, and completed and failed requests."""
    root = tmp_path_factory.mktemp("history")
    data_dir = root / "var"
    alice = _create_user(data_dir, "alice", 5)
    run_cli("credits", "grant", "alice", "10", "--reason", "welcome", *_dir(data_dir))
    factory = ServerFactory(root)
    try:
        server = factory.start(data_dir=data_dir)
        with server.client(alice) as client:
            for size in ("512x512", "1024x1024"):
                response = client.post(
                    "/createGenerationRequest", json={**GENERATION, "userId": "alice", "size": size}
                )
                assert response.status_code == 200, response.text
        factory.stop_all()
        failing = factory.start(data_dir=data_dir, AI_FAILURE_RATE="1")
        with failing.client(failing.keys()["testUser1"]) as client:
            failed = client.post("/createGenerationRequest", json=GENERATION)
        assert failed.status_code == 500, failed.text
        assert failed.json()["error"] == "AI generation failed, credits refunded."
        assert failed.json()["status"] == "failed"
    finally:
        factory.stop_all()
    yield data_dir


# -- users and credits ---------------------------------------------------------------------------
def test_users_create_prints_the_key_alone_on_the_last_line_and_it_works_against_a_server(
    servers: ServerFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    result = run_cli("users", "create", "alice", "--credits", "5", *_dir(data_dir))
    key = result.stdout.splitlines()[-1]
    assert key.startswith("ig_") and " " not in key

    server = servers.start(data_dir=data_dir)
    with server.client(key) as alice:
        assert alice.get("/v1/users/alice").json()["credits"] == 5
        assert alice.get("/v1/users/testUser1").status_code == 403

        granted = run_cli(
            "credits", "grant", "alice", "10", "--reason", "r", *_dir(data_dir)
        )  # beside the server
        assert "15" in granted.stdout
        credits = credits_of(alice, "alice")
    assert credits["currentCredits"] == 15
    newest = credits["transactions"][0]
    assert (newest["type"], newest["credits"], newest["reason"]) == ("grant", 10, "r")


def test_users_create_refuses_a_user_that_exists_or_a_bad_id(tmp_path: Path) -> None:
    _create_user(tmp_path, "alice", 5)
    again = run_cli("users", "create", "alice", "--credits", "9", *_dir(tmp_path), check=False)
    assert again.returncode != 0
    assert "already exists" in again.stderr
    bad = run_cli("users", "create", "a/b", *_dir(tmp_path), check=False)
    assert bad.returncode != 0
    assert "Invalid userId" in bad.stderr
    assert ("alice", 5) in query_db(tmp_path, BALANCES)


def test_credits_grant_refuses_to_take_a_balance_below_zero(tmp_path: Path) -> None:
    _create_user(tmp_path, "alice", 5)
    args = ["credits", "grant", "alice", "-6", "--reason", "too much", *_dir(tmp_path)]
    result = run_cli(*args, check=False)
    assert result.returncode != 0
    assert "Insufficient credits" in result.stderr
    assert ("alice", 5) in query_db(tmp_path, BALANCES)


def test_credits_grant_with_a_negative_amount_adjusts_down(tmp_path: Path) -> None:
    _create_user(tmp_path, "alice", 5)
    result = run_cli(
        "credits", "grant", "alice", "-3", "--reason", "chargeback", *_dir(tmp_path), check=False
    )
    assert result.returncode == 0, result.stderr
    assert ("alice", 2) in query_db(tmp_path, BALANCES)


# -- export and import ----------------------------------------------------------------------------
def _export(data_dir: Path, file: Path) -> list[dict[str, object]]:
    run_cli("export", str(file), *_dir(data_dir))
    return [json.loads(line) for line in file.read_text().splitlines()]


def test_export_writes_every_user_request_and_ledger_entry_as_jsonl(history: Path, tmp_path: Path) -> None:
    records = _export(history, tmp_path / "export.jsonl")
    by_collection: dict[object, int] = {}
    for record in records:
        by_collection[record["collection"]] = by_collection.get(record["collection"], 0) + 1
    assert by_collection["users"] == 3
    assert by_collection["generationRequests"] == 3
    ledger_entries = query_db(history, "SELECT count(*) FROM ledger_entries")[0][0]
    assert by_collection["transactions"] == ledger_entries


def test_import_brings_users_that_are_new_to_the_target_with_their_balance_and_history(
    history: Path, tmp_path: Path
) -> None:
    file = tmp_path / "export.jsonl"
    _export(history, file)
    target = tmp_path / "target"

    run_cli("import", str(file), *_dir(target))

    source_alice = query_db(history, "SELECT credits FROM users WHERE id = 'alice'")
    assert query_db(target, "SELECT credits FROM users WHERE id = 'alice'") == source_alice
    requests = "SELECT id, status, cost FROM generation_requests ORDER BY id"
    assert query_db(target, requests) == query_db(history, requests)
    assert_verified(target)


def test_importing_the_same_file_twice_changes_nothing_the_second_time(history: Path, tmp_path: Path) -> None:
    file = tmp_path / "export.jsonl"
    _export(history, file)
    target = tmp_path / "target"
    run_cli("import", str(file), *_dir(target))
    once = query_db(target, BALANCES), query_db(target, "SELECT count(*) FROM ledger_entries")

    run_cli("import", str(file), *_dir(target))

    assert (query_db(target, BALANCES), query_db(target, "SELECT count(*) FROM ledger_entries")) == once
    assert_verified(target)


def test_export_then_import_into_a_new_data_dir_gives_the_same_balances(
    history: Path, tmp_path: Path
) -> None:
    file = tmp_path / "export.jsonl"
    _export(history, file)
    target = tmp_path / "target"

    run_cli("import", str(file), *_dir(target))

    assert query_db(target, BALANCES) == query_db(history, BALANCES)


def test_an_import_with_a_bad_line_names_the_line_and_imports_nothing(history: Path, tmp_path: Path) -> None:
    file = tmp_path / "export.jsonl"
    records = _export(history, file)
    users = [r for r in records if r["collection"] == "users"]
    good = [*users, *[r for r in records if r["collection"] == "transactions"]]
    bad = {**good[2], "credits": "lots"}  # line 3
    file.write_text("\n".join(json.dumps(r) for r in [*good[:2], bad, *good[3:]]) + "\n")
    target = tmp_path / "target"
    _create_user(target, "zoe", 1)  # the target exists, with its initial data
    before = query_db(target, BALANCES), query_db(target, "SELECT count(*) FROM ledger_entries")

    result = run_cli("import", str(file), *_dir(target), check=False)

    assert result.returncode != 0
    assert "line 3" in result.stdout + result.stderr
    assert (query_db(target, BALANCES), query_db(target, "SELECT count(*) FROM ledger_entries")) == before


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        '["a list"]',
        '{"collection": "planets", "id": "x"}',
        '{"collection": "users", "id": "a/b", "credits": 1}',
    ],
    ids=["not JSON", "not an object", "unknown collection", "bad id"],
)
def test_an_import_refuses_each_kind_of_bad_line_by_number(tmp_path: Path, line: str) -> None:
    file = tmp_path / "bad.jsonl"
    good = json.dumps({"collection": "users", "id": "newbie", "credits": 3})
    file.write_text(f"{good}\n\n{line}\n")  # a blank line 2 is allowed and still counted

    result = run_cli("import", str(file), *_dir(tmp_path), check=False)

    assert result.returncode != 0
    assert "line 3" in result.stderr
    assert query_db(tmp_path, "SELECT count(*) FROM users WHERE id = 'newbie'") == [(0,)]


# -- verify --------------------------------------------------------------------------------------
def test_verify_passes_on_a_database_with_completed_and_failed_requests(history: Path) -> None:
    result = verify(history)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("ok")


def test_verify_fails_naming_invariant_1_when_a_balance_no_longer_matches_its_ledger(tmp_path: Path) -> None:
    _create_user(tmp_path, "alice", 5)
    tamper_db(tmp_path, "UPDATE users SET credits = credits + 1 WHERE id = 'alice'")

    result = verify(tmp_path)

    assert result.returncode == 1
    assert "invariant 1" in result.stdout
    assert "alice" in result.stdout
    assert "1 violation" in result.stderr


def test_verify_fails_naming_invariant_3_when_a_completed_request_keeps_a_refund(
    history: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(history, copy)  # its servers are stopped: the SQLite file is whole
    (request_id,) = query_db(copy, "SELECT id FROM generation_requests WHERE status = 'failed'")[0]
    tamper_db(copy, "UPDATE generation_requests SET status = 'completed' WHERE id = ?", request_id)

    result = verify(copy)

    assert result.returncode == 1
    assert "invariant 3" in result.stdout and request_id in result.stdout


# -- the first start -----------------------------------------------------------------------------
def test_the_initial_data_is_loaded_on_the_first_start_only(servers: ServerFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    server = servers.start(data_dir=data_dir)
    keys = server.keys()
    with server.client(keys["testUser1"]) as client:
        assert client.post("/createGenerationRequest", json=GENERATION).status_code == 200
    _create_user(data_dir, "alice", 5)
    keys_file = (data_dir / "initial-keys.txt").read_text()
    server.stop()

    restarted = servers.start(data_dir=data_dir)

    assert (data_dir / "initial-keys.txt").read_text() == keys_file
    with restarted.client(keys["testUser1"]) as client:
        assert credits_of(client, "testUser1")["currentCredits"] == 99
    with restarted.client(keys["admin"]) as admin:
        assert admin.get("/v1/users/alice").json()["credits"] == 5
        assert admin.get("/v1/users/testUser2").json()["credits"] == 10
    grants = "SELECT count(*) FROM ledger_entries WHERE reason = 'initial data'"
    assert query_db(data_dir, grants) == [(2,)]
    assert query_db(data_dir, "SELECT count(*) FROM api_keys") == [(4,)]
    assert "first start" not in restarted.log.read_text()
    assert httpx.get(f"{restarted.url}/readyz").status_code == 200
