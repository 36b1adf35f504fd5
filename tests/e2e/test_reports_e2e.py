"""Reports end to end: import history, backfill, the HTML and markdown forms, two schedulers at once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imagegen.domain import reports
from tests.support import IMAGEGEN, ServerFactory, run_cli

NOW = datetime.now(UTC)
WEEKS = [reports.week_of(NOW - timedelta(weeks=n)) for n in (4, 3, 2)]  # three complete past weeks


def write_history(path: Path, per_week: int = 40) -> None:
    """Requests in three past weeks, the middle one failing a lot on model-b."""
    lines = [json.dumps({"collection": "users", "id": "history", "credits": 0})]
    for w, week in enumerate(WEEKS):
        for n in range(per_week):
            failed = w == 1 and n % 2 == 0
            record = {
                "collection": "generationRequests",
                "id": f"h{w}x{n}",
                "userId": "history",
                "model": "model-b" if n % 2 == 0 else "model-a",
                "style": "anime",
                "color": "neon",
                "size": "512x512",
                "prompt": "history",
                "status": "failed" if failed else "completed",
                "cost": 1,
                "createdAt": (week.start + timedelta(hours=n)).isoformat(),
            }
            lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def test_import_then_backfill_then_the_html_and_markdown_reports(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "var")]
    history = tmp_path / "history.jsonl"
    write_history(history)
    assert "120 generationRequests" in run_cli("import", str(history), *data).stdout
    done = run_cli("backfill", "--from", WEEKS[0].id, "--to", WEEKS[-1].id, *data)
    assert f"reported 3 weeks ({WEEKS[0].id} to {WEEKS[-1].id})" in done.stdout

    page = tmp_path / "report.html"
    run_cli("report", "--week", WEEKS[1].id, "--format", "html", "--output", str(page), *data)
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and WEEKS[1].id in html
    assert html.count("<svg") >= 2
    markdown = run_cli("report", "--week", WEEKS[1].id, "--format", "md", *data).stdout
    assert WEEKS[1].id in markdown and "Requests" in markdown
    as_json = json.loads(run_cli("report", "--week", WEEKS[1].id, *data).stdout)
    assert (as_json["totalRequests"], as_json["failedRequests"]) == (40, 20)


def test_the_report_routes_serve_json_markdown_and_html(servers: ServerFactory, tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    run_cli("import", str(history), "--data-dir", str(tmp_path / "var"))
    server = servers.start(data_dir=tmp_path / "var")
    with server.client(server.keys()["admin"]) as client:
        made = client.post("/v1/reports", json={"week": WEEKS[2].id})
        assert made.status_code == 201 and made.json()["totalRequests"] == 40
        listed = client.get("/v1/reports").json()["items"]
        assert WEEKS[2].id in [r["id"] for r in listed]
        html = client.get(f"/v1/reports/{WEEKS[2].id}", params={"format": "html"})
        assert html.headers["content-type"].startswith("text/html") and "<svg" in html.text
        markdown = client.get(f"/v1/reports/{WEEKS[2].id}", params={"format": "md"})
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert client.get("/v1/reports/1999-W01").status_code == 404
    with server.client(server.keys()["testUser1"]) as client:
        assert client.get("/v1/reports").status_code == 403


def test_two_scheduler_processes_catch_up_each_missed_week_exactly_once(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    run_cli("import", str(history), "--data-dir", str(tmp_path / "var"))
    env = {**os.environ, "IMAGEGEN_DATA_DIR": str(tmp_path / "var")}
    logs = [tmp_path / f"scheduler{n}.log" for n in range(2)]
    processes = []
    for log in logs:
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen([IMAGEGEN, "serve", "--role", "scheduler"], env=env, stdout=out, stderr=out)
            )
    expected = [week.id for week in reports.weeks_from(WEEKS[0], reports.previous_week(NOW))]
    try:
        deadline = time.monotonic() + 60
        while sum(_reported(log) for log in logs) < len(expected):
            assert time.monotonic() < deadline, "\n".join(log.read_text() for log in logs)
            time.sleep(0.2)
        time.sleep(1.0)  # would a second report of any week show up?
    finally:
        for process in processes:
            process.terminate()
            process.wait(15)
    done = sorted(
        week for log in logs for week in re.findall(r"scheduled report (\S+) done", log.read_text())
    )
    assert done == sorted(expected)


def _reported(log: Path) -> int:
    return len(re.findall(r"scheduled report \S+ done", log.read_text()))
