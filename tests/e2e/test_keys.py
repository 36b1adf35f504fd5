"""API keys have ids: returned where a key is made, listed with their last use, revoked by id.

Through the admin API and through `imagegen keys` on the server's machine (the way back in when the
admin key is lost), against a running server of two API processes: a key revoked anywhere is
refused by every process from its next request.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import wait_for
from tests.support import GENERATION, Server, ServerFactory, run_cli

INTERVAL = "0.2"  # seconds between a process's writes of its keys' last use
SERVER_ENV = {"IMAGEGEN_KEY_USE_INTERVAL_SECONDS": INTERVAL, "IMAGEGEN_WORKERS": "0"}


def keys_of(admin: httpx.Client, user_id: str) -> dict[str, dict[str, Any]]:
    response = admin.get(f"/v1/admin/users/{user_id}/keys")
    assert response.status_code == 200, response.text
    assert response.json()["nextCursor"] is None
    return {key["id"]: key for key in response.json()["items"]}


def test_a_keys_id_comes_with_it_and_the_list_shows_creation_last_use_and_revocation(
    server: Server, admin: httpx.Client
) -> None:
    created = admin.post("/v1/admin/users", json={"userId": "keyed", "credits": 5})
    other = admin.post("/v1/admin/users/keyed/keys")
    assert created.status_code == 201 and other.status_code == 201
    first_id, first = created.json()["keyId"], created.json()["apiKey"]
    second_id = other.json()["keyId"]
    listed = keys_of(admin, "keyed")
    assert set(listed) == {first_id, second_id}
    assert all(
        k["userId"] == "keyed" and k["lastUsedAt"] is None and k["revokedAt"] is None for k in listed.values()
    )
    assert all("apiKey" not in k and first not in str(k) for k in listed.values())

    with server.client(first) as user:
        assert user.get("/v1/users/keyed").status_code == 200
        assert user.get("/v1/admin/users/keyed/keys").status_code == 403  # admin only
    used = wait_for(lambda: keys_of(admin, "keyed")[first_id]["lastUsedAt"], 10, "the first key's last use")
    assert used >= listed[first_id]["createdAt"]
    assert keys_of(admin, "keyed")[second_id]["lastUsedAt"] is None

    assert admin.delete(f"/v1/admin/keys/{first_id}").status_code == 204
    assert keys_of(admin, "keyed")[first_id]["revokedAt"] is not None
    with server.client(first) as user:
        assert user.get("/v1/users/keyed").status_code == 401
    again = admin.delete(f"/v1/admin/keys/{first_id}")
    assert again.status_code == 404 and again.json()["code"] == "not_found"
    assert admin.get("/v1/admin/users/nobody/keys").status_code == 404


def test_the_first_starts_keys_file_names_each_keys_id(server: Server, admin: httpx.Client) -> None:
    lines = [line.split() for line in (server.data_dir / "initial-keys.txt").read_text().splitlines()]
    ids = {who: key_id for who, _, key_id in (line for line in lines if line[0] != "#")}
    every = {key["id"]: key for key in admin.get("/v1/admin/keys").json()["items"]}

    assert set(ids) == {"admin", "testUser1", "testUser2"}
    assert every[ids["admin"]]["userId"] is None
    assert every[ids["testUser1"]]["userId"] == "testUser1"


def cli(data_dir: Path, *args: str, check: bool = True) -> Any:
    return run_cli("keys", *args, "--data-dir", str(data_dir), check=check)


def creates(server: Server, key: str, user_id: str, times: int) -> list[int]:
    """`times` creates, each on a new connection: the two processes answer them in turn."""
    statuses = []
    for _ in range(times):
        with server.client(key) as client:
            statuses.append(
                client.post("/v1/generations", json={**GENERATION, "userId": user_id}).status_code
            )
    return statuses


def test_keys_made_listed_and_revoked_on_the_servers_machine_apply_to_every_process(
    servers: ServerFactory,
) -> None:
    server = servers.start("--processes", "2", **SERVER_ENV)
    data_dir = server.data_dir

    made = cli(data_dir, "create", "--admin")
    admin_key = made.stdout.strip().splitlines()[-1]
    with server.client(admin_key) as admin:  # the new admin key works on the running server
        assert admin.post("/v1/admin/users", json={"userId": "cli-user", "credits": 50}).status_code == 201
    made_for_user = cli(data_dir, "create", "cli-user")
    user_key = made_for_user.stdout.strip().splitlines()[-1]
    key_id = re.search(r"id (\S+);", made_for_user.stderr).group(1)  # type: ignore[union-attr]
    assert creates(server, user_key, "cli-user", 8) == [202] * 8  # both processes cache the key

    listing = cli(data_dir, "list", "cli-user").stdout
    rows = {row[0]: row for row in (line.split("\t") for line in listing.splitlines()[1:])}
    assert rows[key_id][1] == "cli-user" and rows[key_id][4] == "-"  # not revoked
    everything = cli(data_dir, "list").stdout
    assert key_id in everything and admin_key not in everything and user_key not in everything
    assert cli(data_dir, "revoke", key_id).stdout.strip() == f"revoked key {key_id}"

    assert creates(server, user_key, "cli-user", 8) == [401] * 8
    with server.client(admin_key) as admin:
        assert admin.get("/v1/users/cli-user").json()["credits"] == 50 - 8
        assert keys_of(admin, "cli-user")[key_id]["revokedAt"] is not None
    assert cli(data_dir, "list", "cli-user").stdout.count("\t-\n") < listing.count("\t-\n")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["create"], 2, "give a USER or --admin"),
        (["create", "testUser1", "--admin"], 2, "give a USER or --admin"),
        (["create", "nobody"], 1, "User not found"),
        (["revoke", "no-such-key"], 1, "No active key"),
        (["revoke", "bad/id"], 1, "Invalid key id"),
    ],
)
def test_keys_commands_refuse_what_makes_no_sense(
    server: Server, args: list[str], code: int, message: str
) -> None:
    result = cli(server.data_dir, *args, check=False)

    assert result.returncode == code and message in result.stderr
