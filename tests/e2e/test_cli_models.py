"""`imagegen models`: bind, show, unbind and price a model on the server's database.

An edit made with the command while a server runs on the same data folder is what that server's
admin API and catalog answer next, and what its next create charges.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import GENERATION, ServerFactory, run_cli

BINDING = {
    "deployments": [
        {
            "engine": "openai",
            "settings": {"model": "dall-e-3", "api_key_env": "OPENAI_API_KEY", "timeout_s": 60},
        },
        {"engine": "simulated", "settings": {"failure_rate": 0}},
    ]
}


def test_models_bind_show_prices_and_unbind_reach_the_running_server(
    servers: ServerFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    server = servers.start(data_dir=data_dir)
    folder = ["--data-dir", str(data_dir)]
    (tmp_path / "binding.json").write_text(json.dumps(BINDING))

    bound = json.loads(run_cli("models", "bind", "model-a", str(tmp_path / "binding.json"), *folder).stdout)
    shown = json.loads(run_cli("models", "show", "model-a", *folder).stdout)
    priced = json.loads(run_cli("models", "prices", "model-a", "512x512=6", *folder).stdout)
    with server.client(server.keys()["admin"]) as admin:
        seen = admin.get("/v1/admin/models/model-a/deployments").json()
        cost = admin.post("/v1/generations", json=GENERATION).json()["cost"]
        listed = {m["name"]: m["prices"] for m in admin.get("/v1/catalog").json()["models"]}
    cleared = json.loads(run_cli("models", "prices", "model-a", "--clear", *folder).stdout)
    unbound = json.loads(run_cli("models", "unbind", "model-a", *folder).stdout)

    assert bound == shown
    assert shown["engines"] == ["openai", "simulated"]
    assert shown["deployments"][0]["settings"] == {
        "model": "dall-e-3",
        "api_key_env": "OPENAI_API_KEY",
        "timeout_s": 60,
    }
    assert seen["deployments"] == shown["deployments"]
    assert priced == {"512x512": 6} and cost == 6 and listed["model-a"]["512x512"] == 6
    assert cleared == {}
    assert unbound["engines"] == ["simulated"] and unbound["deployments"] == []


def test_models_bind_refuses_a_bad_binding_listing_each_problem(tmp_path: Path) -> None:
    folder = ["--data-dir", str(tmp_path / "var")]
    bad = {
        "deployments": [{"engine": "openai", "settings": {"timout_s": 3, "api_key_env": "sk-0123456789abc"}}]
    }
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "garbled.json").write_text("{nope")

    refused = run_cli("models", "bind", "model-a", str(tmp_path / "bad.json"), *folder, check=False)
    garbled = run_cli("models", "bind", "model-a", str(tmp_path / "garbled.json"), *folder, check=False)
    unknown = run_cli("models", "show", "model-zz", *folder, check=False)
    bad_price = run_cli("models", "prices", "model-a", "512x512=0", "9x9=2", *folder, check=False)
    still = json.loads(run_cli("models", "show", "model-a", *folder).stdout)

    assert refused.returncode == 1
    assert "deployments[0].settings.timout_s" in refused.stderr
    assert "deployments[0].settings.api_key_env" in refused.stderr
    assert garbled.returncode == 2 and "cannot read a JSON binding" in garbled.stderr
    assert unknown.returncode == 1 and "model-zz" in unknown.stderr
    assert (
        bad_price.returncode == 1
        and "prices.512x512" in bad_price.stderr
        and "prices.9x9" in bad_price.stderr
    )
    assert still["deployments"] == [] and still["prices"] == {}


def test_a_binding_and_prices_survive_imagegen_export_and_import(tmp_path: Path) -> None:
    source, target = ["--data-dir", str(tmp_path / "a")], ["--data-dir", str(tmp_path / "b")]
    (tmp_path / "binding.json").write_text(json.dumps(BINDING))
    run_cli("models", "bind", "model-b", str(tmp_path / "binding.json"), *source)
    run_cli("models", "prices", "model-b", "1024x1792=9", *source)
    shown = run_cli("models", "show", "model-b", *source).stdout

    run_cli("export", str(tmp_path / "all.jsonl"), *source)
    imported = run_cli("import", str(tmp_path / "all.jsonl"), *target)

    assert "1 models" in imported.stdout  # model-a is as the target's first start made it
    assert run_cli("models", "show", "model-b", *target).stdout == shown
    assert "OPENAI_API_KEY" in shown and "sk-" not in (tmp_path / "all.jsonl").read_text()
