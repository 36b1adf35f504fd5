"""The official Cloud Firestore emulator for the tests: one per session, cleared before each test.

It is the Debian package google-cloud-cli-firestore-emulator (a jar run on the installed Java). Where
the jar is missing the Firestore tests skip with the reason, unless IMAGEGEN_REQUIRE_SERVICES is set
(CI), where they fail. `tests/conftest.py` imports these fixtures so that the whole session shares one
emulator, and its `storage` fixture runs the shared contract suite on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest

from tests.support import free_port, load_initial_data

if TYPE_CHECKING:
    from imagegen.storage.firestore import FirestoreStorage

JAR = Path(
    os.environ.get(
        "IMAGEGEN_FIRESTORE_EMULATOR_JAR",
        "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
    )
)
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
PROJECT = "demo-imagegen"  # a demo- project never reaches a real one
START_TIMEOUT = 60.0


def _require_or_skip(reason: str) -> NoReturn:
    from tests.conftest import require_or_skip  # here, not at import: conftest imports this module

    require_or_skip(reason)
    raise AssertionError("require_or_skip always raises")


class Emulator:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Emulator:
        java = shutil.which("java")
        if java is None:
            _require_or_skip("the Firestore emulator needs Java (apt-get install openjdk-17-jre-headless)")
        command = [java, "-Duser.language=en", "-cp", str(JAR), MAIN_CLASS, "--host=127.0.0.1"]
        command.append(f"--port={self.port}")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Firestore emulator exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"http://{self.host}/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"the Firestore emulator did not answer in {START_TIMEOUT} s:\n{self.log.read_text()}"
        )

    def clear(self, project: str = PROJECT) -> None:
        url = f"http://{self.host}/emulator/v1/projects/{project}/databases/(default)/documents"
        httpx.delete(url, timeout=30).raise_for_status()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Starts the emulator on a free loopback port; yields its host:port, exported as
    FIRESTORE_EMULATOR_HOST for the clients of this process and of the servers it starts."""
    if not JAR.is_file():
        _require_or_skip(
            f"the Firestore emulator jar {JAR} is missing "
            "(apt-get install google-cloud-cli-firestore-emulator openjdk-17-jre-headless)"
        )
    emulator = Emulator(tmp_path_factory.mktemp("firestore") / "emulator.log").start()
    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        yield emulator.host
    finally:
        emulator.stop()
        if previous is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous


@pytest.fixture
def firestore_clean(firestore_emulator: str) -> str:
    """The emulator emptied for this test; yields the Firestore URL of its project."""
    url = f"http://{firestore_emulator}/emulator/v1/projects/{PROJECT}/databases/(default)/documents"
    httpx.delete(url, timeout=30).raise_for_status()
    return f"firestore://{PROJECT}"


def emulated_storage(project: str) -> FirestoreStorage:
    """The adapter as tests see it: a test that reaches for the SQL engine is SQL-only and skips."""
    try:
        from imagegen.storage.firestore import FirestoreStorage
    except ImportError as exc:  # google-cloud-firestore is not installed
        _require_or_skip(f"the Firestore tests need google-cloud-firestore ({exc})")

    class EmulatedStorage(FirestoreStorage):
        def __getattr__(self, name: str) -> Any:
            if name == "engine":
                pytest.skip("SQL-only: this test works on storage.engine (SQL), which Firestore has not")
            raise AttributeError(name)

    return EmulatedStorage(project)


async def firestore_storage(request: pytest.FixtureRequest) -> AsyncIterator[FirestoreStorage]:
    """The `storage` fixture's Firestore case: an emptied emulator with the initial data set."""
    request.getfixturevalue("firestore_clean")
    storage = emulated_storage(PROJECT)
    await storage.migrate()
    await load_initial_data(storage)
    yield storage
    await storage.close()
