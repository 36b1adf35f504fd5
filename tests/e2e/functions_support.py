"""Cloud Functions (functions/main.py) served by functions-framework, as the e2e tests run them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.firestore_emulator import PROJECT
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORK = (
    shutil.which("functions-framework", path=str(Path(sys.executable).parent)) or "functions-framework"
)
PREFIX = f"/{PROJECT}/us-central1"  # the emulator's URL shape; functions-framework serves any path


def function_env(emulator: str, folder: Path) -> dict[str, str]:
    """The settings of a function instance on the test emulator: no model latency, no failures."""
    return {
        "FIRESTORE_EMULATOR_HOST": emulator,
        "IMAGEGEN_DATABASE_URL": f"firestore://{PROJECT}",
        "IMAGEGEN_DATA_DIR": str(folder / "var"),
        "IMAGEGEN_MODEL_LATENCY_MS": "0",
        "AI_FAILURE_RATE": "0",
        "THREADS": "1",  # one request at a time, as a Cloud Functions instance
    }


class Function:
    """One `functions-framework --target NAME` process on a free loopback port."""

    def __init__(self, target: str, log_dir: Path, env: dict[str, str]) -> None:
        self.target = target
        self.port = free_port()
        self.log = log_dir / f"{target}-{self.port}.log"
        command = [FRAMEWORK, "--target", target, "--source", str(ROOT / "functions" / "main.py")]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log_dir,
                start_new_session=True,  # its own process group: gunicorn's worker goes with it
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.target} exited:\n{self.log.read_text()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.target} did not listen in {timeout} s:\n{self.log.read_text()}")

    def terminate(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
