"""Marking a report's finding as expected, end to end: the admin route, its refusals, the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imagegen.domain import reports
from tests.support import ServerFactory, run_cli

NOW = datetime.now(UTC)
WEEKS = [reports.week_of(NOW - timedelta(weeks=n)) for n in (6, 5, 4, 3, 2)]
SPIKE_WEEK = WEEKS[-1].id


def write_history(path: Path) -> None:
    """Four ordinary weeks of 60 requests, then a week of 240: a spike."""
    lines = [json.dumps({"collection": "users", "id": "history", "credits": 0})]
    for w, week in enumerate(WEEKS):
        for n in range(240 if w == len(WEEKS) - 1 else 60):
            record = {
                "collection": "generationRequests",
                "id": f"m{w}x{n}",
                "userId": "history",
                "model": "model-a",
                "style": "anime",
                "color": "neon",
                "size": "512x512",
                "prompt": "history",
                "status": "completed",
                "cost": 1,
                "createdAt": (week.start + timedelta(minutes=20 * n)).isoformat(),
            }
            lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def test_an_admin_marks_a_finding_expected_and_takes_the_mark_off(
    servers: ServerFactory, tmp_path: Path
) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    data = ["--data-dir", str(tmp_path / "var")]
    run_cli("import", str(history), *data)
    # No scheduler: its catch-up would run the same week again while the test looks at it.
    server = servers.start("--role", "api", data_dir=tmp_path / "var")
    with server.client(server.keys()["admin"]) as admin:
        made = admin.post("/v1/reports", json={"week": SPIKE_WEEK}).json()
        assert [a["metric"] for a in made["anomalies"]] == ["totalRequests"]

        marked = admin.put(
            f"/v1/reports/{SPIKE_WEEK}/expected", json={"metric": "totalRequests", "note": "launch"}
        )

        assert marked.status_code == 200, marked.text
        assert marked.json()["reportId"] == SPIKE_WEEK
        assert marked.json()["anomaly"]["mark"]["note"] == "launch"
        stored = admin.get(f"/v1/reports/{SPIKE_WEEK}").json()
        assert stored["anomalies"][0]["mark"]["reportId"] == SPIKE_WEEK
        assert "marked expected in" in admin.get(f"/v1/reports/{SPIKE_WEEK}", params={"format": "html"}).text

        unmarked = admin.delete(f"/v1/reports/{SPIKE_WEEK}/expected", params={"metric": "totalRequests"})
        assert unmarked.status_code == 200 and unmarked.json()["anomaly"]["mark"] is None
        after = admin.get(f"/v1/reports/{SPIKE_WEEK}").json()
        assert "mark" not in after["anomalies"][0]

        missing = admin.put(
            f"/v1/reports/{SPIKE_WEEK}/expected",
            json={"metric": "share", "dimension": "style", "key": "anime"},
        )
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        assert "has no finding on share of style 'anime'" in missing.json()["detail"]
        assert admin.put("/v1/reports/1999-W01/expected", json={"metric": "totalRequests"}).status_code == 404
        half = admin.put(f"/v1/reports/{SPIKE_WEEK}/expected", json={"metric": "share", "dimension": "style"})
        assert half.status_code == 422 and "both dimension and key" in half.json()["detail"]
        extra = admin.put(f"/v1/reports/{SPIKE_WEEK}/expected", json={"metric": "totalRequests", "by": "me"})
        assert extra.status_code == 422
        long_note = admin.put(
            f"/v1/reports/{SPIKE_WEEK}/expected", json={"metric": "totalRequests", "note": "x" * 501}
        )
        assert long_note.status_code == 422
        assert admin.get(f"/v1/reports/{SPIKE_WEEK}").json() == after  # the refusals changed nothing
    with server.client(server.keys()["testUser1"]) as user:
        assert (
            user.put(f"/v1/reports/{SPIKE_WEEK}/expected", json={"metric": "totalRequests"}).status_code
            == 403
        )

    printed = json.loads(
        run_cli("expect", SPIKE_WEEK, "--metric", "totalRequests", "--note", "by hand", *data).stdout
    )
    assert printed["mark"]["note"] == "by hand"
    refused = run_cli("expect", SPIKE_WEEK, "--metric", "share", "--dimension", "style", *data, check=False)
    assert refused.returncode == 2 and "both --dimension and --key" in refused.stderr
