"""Worker and scheduler processes (no HTTP) start, and stop cleanly and promptly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import IMAGEGEN


@pytest.mark.parametrize("role", ["worker", "scheduler"])
def test_a_background_role_stops_promptly_on_sigterm(role: str, tmp_path: Path) -> None:
    log = tmp_path / f"{role}.log"
    env = {**os.environ, "IMAGEGEN_DATA_DIR": str(tmp_path / "var")}
    with log.open("wb") as out:
        process = subprocess.Popen([IMAGEGEN, "serve", "--role", role], env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while "process running" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{role} did not start:\n{log.read_text()}"
        time.sleep(0.1)

    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the {role} process ignored SIGTERM:\n{log.read_text()}")
    assert code == 0
    assert "SIGTERM: stopping" in log.read_text()
