"""The Firebase deployment as the Firebase CLI sees it: discovery, packaging, the emulator suite.

- The CLI finds the functions by running the firebase-functions SDK's admin server
  (`firebase_functions/private/serving.py`, in functions/ with ADMIN_PORT set) and reading its
  manifest at /__/functions.yaml; the first test does exactly that.
- functions/requirements.txt names imagegen's wheel by its path; the second test runs firebase.json's
  predeploy step (which builds that wheel) and resolves the file with pip and no index at all.
- The last test is docs/firebase.md's local recipe: `firebase emulators:start` with the repository's
  firebase.json (on free ports) on the Debian Firestore emulator, the initial data loaded with
  `imagegen verify`, and the case study's three curls. It needs `make firebase-tools` (the CLI in
  .firebase/, which .ci/run installs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require_or_skip
from tests.firestore_emulator import JAR
from tests.support import GENERATION, IMAGEGEN, free_port

firebase_functions = pytest.importorskip("firebase_functions", reason="needs firebase-functions")
yaml = pytest.importorskip("yaml", reason="needs PyYAML (a dependency of firebase-functions)")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "functions"
SERVING = Path(firebase_functions.__file__).parent / "private" / "serving.py"
FIREBASE_CLI = ROOT / ".firebase" / "tools" / "node_modules" / ".bin" / "firebase"
LAUNCHER = ROOT / ".firebase" / "cloud-firestore-emulator.jar"
PROJECT = "demo-imagegen"
IMAGE_SECRETS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
LOCAL_SECRETS = "".join(f"{name}=unused-locally\n" for name in IMAGE_SECRETS)
HTTPS = "https"
FUNCTION_TRIGGERS = {
    "createGenerationRequest": (HTTPS, IMAGE_SECRETS),
    "getUserCredits": (HTTPS, []),
    "images": (HTTPS, IMAGE_SECRETS),
    "scheduleWeeklyReport": (HTTPS, []),
    "runWeeklyReports": ("0 0 * * 1", []),
    "sweepGenerationJobs": ("* * * * *", IMAGE_SECRETS),
}


# -- discovery: what `firebase deploy` and `firebase emulators:start` run first ----------------------------
def discovered_manifest(log: Path) -> dict[str, Any]:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(SERVING)],
            cwd=FUNCTIONS,
            env={**os.environ, "ADMIN_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/__/functions.yaml", timeout=30)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            assert answer.status_code == 200, f"{answer.text}\n{log.read_text()}"
            httpx.get(f"http://127.0.0.1:{port}/__/quitquitquit", timeout=10)
            return dict(yaml.safe_load(answer.text))
        raise AssertionError(f"the admin server did not serve the manifest:\n{log.read_text()}")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def trigger_of(endpoint: dict[str, Any]) -> str:
    if "httpsTrigger" in endpoint:
        return HTTPS
    return str(endpoint["scheduleTrigger"]["schedule"])


def test_the_firebase_cli_discovers_every_function_with_its_trigger_and_secrets(tmp_path: Path) -> None:
    endpoints = discovered_manifest(tmp_path / "admin.log")["endpoints"]

    found = {
        name: (trigger_of(endpoint), [s["key"] for s in endpoint.get("secretEnvironmentVariables") or []])
        for name, endpoint in endpoints.items()
    }

    assert found == FUNCTION_TRIGGERS
    assert {tuple(endpoint["region"]) for endpoint in endpoints.values()} == {("us-central1",)}
    scheduled = [
        endpoint["scheduleTrigger"] for endpoint in endpoints.values() if "scheduleTrigger" in endpoint
    ]
    assert [trigger["timeZone"] for trigger in scheduled] == ["UTC", "UTC"]


# -- packaging: what Cloud Build installs ---------------------------------------------------------------
def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_requirements_install_imagegen_from_the_vendored_wheel_with_no_index(tmp_path: Path) -> None:
    [codebase] = json.loads((ROOT / "firebase.json").read_text())["functions"]
    [predeploy] = codebase["predeploy"]
    resource = tmp_path / "functions"  # what the CLI calls $RESOURCE_DIR: the functions' folder
    resource.mkdir()
    shutil.copy(FUNCTIONS / "requirements.txt", resource)
    (resource / "venv").symlink_to(Path(sys.prefix))
    env = {**os.environ, "RESOURCE_DIR": str(resource), "PROJECT_DIR": str(ROOT)}
    subprocess.run(["bash", "-c", predeploy], env=env, check=True, timeout=300, capture_output=True)
    [wheel] = (resource / "vendor").glob("*.whl")
    lines = [line.strip() for line in (resource / "requirements.txt").read_text().splitlines()]
    local = [line for line in lines if line.startswith("./")]

    # The wheel the predeploy step built is the one the requirements name, by path...
    assert local == [f"./vendor/{wheel.name}"]
    assert not any(line.startswith(("--find-links", "--index-url", "--extra-index-url")) for line in lines)
    # ...the whole file resolves with no index (the third-party packages as installed here)...
    pip("install", "--dry-run", "--no-index", "--quiet", "-r", "requirements.txt", cwd=resource)
    # ...and into an empty environment imagegen comes from that file, and from nowhere else.
    empty = tmp_path / "empty"
    venv.create(empty, with_pip=False)
    report = tmp_path / "report.json"
    python = str(empty / "bin" / "python")
    pip(
        "--python",
        python,
        "install",
        "--dry-run",
        "--no-index",
        "--no-deps",
        "--report",
        str(report),
        *local,
        cwd=resource,
    )
    [installed] = json.loads(report.read_text())["install"]
    assert installed["metadata"]["name"] == "imagegen-backend"
    assert installed["download_info"]["url"] == wheel.as_uri()


# -- the emulator suite: docs/firebase.md's local recipe ------------------------------------------------
@dataclass
class Suite:
    process: subprocess.Popen[bytes]
    log: Path
    firestore_port: int
    functions_port: int

    @property
    def functions_url(self) -> str:
        return f"http://127.0.0.1:{self.functions_port}/{PROJECT}/us-central1"


def project_copy(folder: Path) -> dict[str, int]:
    """The repository's firebase.json, rules, indexes and functions, with free emulator ports."""
    for name in ("firestore.rules", "firestore.indexes.json"):
        shutil.copy(ROOT / name, folder)
    (folder / "functions").mkdir()
    for name in ("main.py", "requirements.txt"):
        shutil.copy(FUNCTIONS / name, folder / "functions")
    # The CLI activates functions/venv; this one is the test run's own (the same packages).
    (folder / "functions" / "venv").symlink_to(Path(sys.prefix))
    (folder / "functions" / ".secret.local").write_text(LOCAL_SECRETS)  # as `make emulators` writes
    config = json.loads((ROOT / "firebase.json").read_text())
    ports = {name: free_port() for name in ("firestore", "websocket", "functions", "hub", "logging")}
    emulators = config["emulators"]
    emulators["firestore"] |= {"port": ports["firestore"], "websocketPort": ports["websocket"]}
    emulators["functions"] |= {"port": ports["functions"]}
    emulators |= {name: {"host": "127.0.0.1", "port": ports[name]} for name in ("hub", "logging")}
    (folder / "firebase.json").write_text(json.dumps(config, indent=2))
    return ports


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    if not FIREBASE_CLI.exists() or not LAUNCHER.exists():
        require_or_skip("the Firebase CLI is not installed: run `make firebase-tools`")
    if not JAR.is_file() or shutil.which("java") is None:
        require_or_skip(f"the Firestore emulator needs {JAR} and Java")
    folder = tmp_path_factory.mktemp("firebase-project")
    ports = project_copy(folder)
    log = folder / "emulators.log"
    env = {key: value for key, value in os.environ.items() if key != "FIRESTORE_EMULATOR_HOST"}
    env |= {
        "FIRESTORE_EMULATOR_BINARY_PATH": str(LAUNCHER),
        "IMAGEGEN_DATA_DIR": str(folder / "var"),
        "AI_FAILURE_RATE": "0",
        "IMAGEGEN_MODEL_LATENCY_MS": "0",
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(FIREBASE_CLI), "emulators:start", "--only", "firestore,functions", "--project", PROJECT],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    suite = Suite(process, log, ports["firestore"], ports["functions"])
    try:
        deadline = time.monotonic() + 180
        while "All emulators ready" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"firebase emulators:start did not get ready:\n{log.read_text()}")
            time.sleep(0.5)
        yield suite
    finally:
        stop_suite(suite)


def stop_suite(suite: Suite) -> None:
    """Ctrl-C, as a user stops it: the CLI stops the emulators it started (in their own groups)."""
    if suite.process.poll() is None:
        os.killpg(suite.process.pid, signal.SIGINT)
        try:
            suite.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(suite.process.pid, signal.SIGKILL)
            suite.process.wait()


def load_initial_data(suite: Suite, folder: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{suite.firestore_port}",
        "IMAGEGEN_DATABASE_URL": f"firestore://{PROJECT}",
        "IMAGEGEN_DATA_DIR": str(folder),
    }
    subprocess.run([IMAGEGEN, "verify"], env=env, check=True, capture_output=True, timeout=120)
    lines = (folder / "initial-keys.txt").read_text().splitlines()
    return dict(line.split()[:2] for line in lines if line.strip() and not line.startswith("#"))


def test_the_emulator_suite_serves_the_case_studys_three_curls(suite: Suite, tmp_path: Path) -> None:
    keys = load_initial_data(suite, tmp_path)
    user = {"Authorization": f"Bearer {keys['testUser1']}"}
    base = suite.functions_url

    created = httpx.post(f"{base}/createGenerationRequest", json=GENERATION, headers=user, timeout=60)
    ledger = httpx.get(f"{base}/getUserCredits", params={"userId": "testUser1"}, headers=user, timeout=60)
    report = httpx.get(
        f"{base}/scheduleWeeklyReport", headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=60
    )

    assert created.status_code == 200, created.text
    body = created.json()
    assert (body["status"], body["deductedCredits"]) == ("completed", 1)
    assert body["imageUrl"] == f"{base}/images/{body['generationRequestId']}.png"
    image = httpx.get(body["imageUrl"], timeout=60)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert ledger.status_code == 200
    assert ledger.json()["currentCredits"] == 99
    assert report.status_code == 200, report.text
    assert (report.json()["totalRequests"], report.json()["completedRequests"]) == (1, 1)
    log = suite.log.read_text()
    assert "Loaded functions definitions from source: " + ", ".join(sorted(FUNCTION_TRIGGERS)) in log
    assert "Unable to access secret" not in log
