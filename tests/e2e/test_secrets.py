"""Secrets stay secret: no key in any log line, private files, keys written once and never over a file.

Every key the server and the CLI create or receive, and the webhook signing secret, are looked for in
the server's whole log (stdout and stderr) after a first start and after a run that uses every
route that handles one, and in the CLI's output other than the line that is the key itself.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_v1_webhooks import BODY, Receiver
from tests.support import Server, ServerFactory, run_cli

PLANTED = "# someone else's file\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def keys_in(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split()[:2] for line in lines if line and not line.startswith("#"))


def assert_no_secret_in(text: str, secrets: list[str]) -> None:
    assert secrets and all(len(s) > 20 for s in secrets)
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:6]}...) is in the log"


def test_a_cli_command_that_creates_the_database_prints_no_key_and_says_where_they_are(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "fresh" / "var"
    result = run_cli("verify", "--data-dir", str(data_dir))
    keys = keys_in(data_dir / "initial-keys.txt")
    assert_no_secret_in(result.stdout + result.stderr, list(keys.values()))
    assert "initial-keys.txt" in result.stderr
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "imagegen.db") == 0o600
    assert mode(data_dir / "initial-keys.txt") == 0o600


def test_the_files_imagegen_creates_are_readable_by_their_owner_only(
    servers: ServerFactory, tmp_path: Path
) -> None:
    database = tmp_path / "state" / "db" / "imagegen.db"  # folders imagegen has to create
    server = servers.start(IMAGEGEN_DATABASE_URL=f"sqlite:///{database}")
    with server.client(server.keys()["testUser1"]) as client:  # some writes: the WAL is in use
        assert client.post("/v1/generations", json=BODY).status_code == 202
    assert mode(database.parent) == 0o700
    for name in ("imagegen.db", "imagegen.db-wal", "imagegen.db-shm"):
        assert mode(database.parent / name) == 0o600, name
    assert mode(server.data_dir / "initial-keys.txt") == 0o600


def test_an_existing_keys_file_is_never_overwritten_and_the_new_keys_go_beside_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(0o755)  # an install's folder: its owner's choice stays
    planted = data_dir / "initial-keys.txt"
    planted.write_text(PLANTED)
    planted.chmod(0o644)

    result = run_cli("verify", "--data-dir", str(data_dir))
    assert mode(data_dir) == 0o755 and mode(data_dir / "imagegen.db") == 0o600
    assert planted.read_text() == PLANTED and mode(planted) == 0o644
    beside = data_dir / "initial-keys.1.txt"
    assert set(keys_in(beside)) == {"admin", "testUser1", "testUser2"}
    assert mode(beside) == 0o600
    assert str(beside.resolve()) in result.stderr


@pytest.mark.parametrize("target_exists", [False, True])
def test_a_symlink_in_place_of_the_keys_file_is_not_followed(tmp_path: Path, target_exists: bool) -> None:
    data_dir, outside = tmp_path / "var", tmp_path / "outside.txt"
    data_dir.mkdir()
    if target_exists:
        outside.write_text(PLANTED)
    (data_dir / "initial-keys.txt").symlink_to(outside)

    run_cli("verify", "--data-dir", str(data_dir))
    assert outside.read_text() == PLANTED if target_exists else not outside.exists()
    assert "admin" in keys_in(data_dir / "initial-keys.1.txt")


def test_a_whole_run_logs_no_key_and_no_secret(servers: ServerFactory) -> None:
    receiver = Receiver()
    receiver.thread.start()
    try:
        server = servers.start(IMAGEGEN_WEBHOOK_ALLOW_PRIVATE="1", IMAGEGEN_WEBHOOK_MAX_RETRY_SECONDS="2")
        secrets = _exercise(server, receiver)
    finally:
        receiver.http.shutdown()
        receiver.http.server_close()
    server.stop()
    log = server.log.read_text()
    assert_no_secret_in(log, secrets)
    assert str((server.data_dir / "initial-keys.txt").resolve()) in log  # the first start says where


def _exercise(server: Server, receiver: Receiver) -> list[str]:
    """Uses every route and command that creates, returns or checks a key or the signing secret."""
    keys = server.keys()
    unknown = "ig_" + "U" * 43
    with server.client(keys["admin"]) as admin:
        # Every answer that carries a key or the secret, an idempotent replay too, says no-store.
        once = {"json": {"userId": "dave", "credits": 20}, "headers": {"Idempotency-Key": "dave-1"}}
        created, replayed = admin.post("/v1/admin/users", **once), admin.post("/v1/admin/users", **once)
        issued_answer = admin.post("/v1/admin/users/dave/keys")
        secret_answer = admin.get("/v1/admin/webhooks/secret")
        assert replayed.headers.get("idempotent-replayed") == "true"
        for answer in (created, replayed, issued_answer, secret_answer):
            assert answer.status_code in (200, 201) and answer.headers["cache-control"] == "no-store"
        dave, issued = created.json()["apiKey"], issued_answer.json()
        secret = secret_answer.json()["secret"]
        assert admin.delete(f"/v1/admin/keys/{issued['keyId']}").status_code == 204
        admin.post("/v1/admin/users", json={"userId": "x" * 10, "credits": "many"})  # 422
    cli = run_cli("users", "create", "erin", "--credits", "5", "--data-dir", str(server.data_dir))
    erin = cli.stdout.strip().splitlines()[-1]
    with server.client(dave) as client:
        hooked = {**BODY, "webhook": receiver.url("/ok"), "webhookEvents": ["start", "completed"]}
        assert client.post("/v1/generations", json=hooked, headers={"Prefer": "wait=10"}).status_code == 200
        failing = f"http://127.0.0.1:{receiver.http.server_address[1]}/fail?token={unknown}"
        receiver.script[f"/fail?token={unknown}"] = [500]
        client.post("/v1/generations", json={**BODY, "webhook": failing}, headers={"Prefer": "wait=10"})
        client.post("/createGenerationRequest", json={**BODY, "userId": "dave", "padding": "x" * 70_000})
    for key in (unknown, issued["apiKey"], erin):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
            client.get("/v1/users/dave")
            client.post("/v1/generations", json=BODY)
    receiver.wait_for("/ok", 2)
    time.sleep(2.5)  # the failing delivery's retries, to its deadline
    assert receiver.received(f"/fail?token={unknown}")
    secret_key = secret.removeprefix("whsec_")
    assert_no_secret_in(cli.stderr, [erin])
    return [*keys.values(), dave, issued["apiKey"], erin, unknown, secret, secret_key]
