"""Scenario g: the Firebase deployment against the case study's own create, on the official emulator.

In one run, on one Firestore emulator (the Debian jar, as the tests run it):

- **ceiling**: the case study's create written directly here, with google-cloud-firestore and no
  HTTP: one transaction that reads the user and writes the user, the request and the ledger entry,
  then one status update (the job done). Sequential (one process), then 8 processes on 8 users.
- **imagegen**: `createGenerationRequest` (functions/main.py) served by functions-framework, one
  request at a time per process (THREADS=1, as a Cloud Functions instance), zero model latency:
  sequential (1 client, 1 instance), 8 clients on 8 users over 8 instances, and the hot user
  (8 clients on one user over 8 instances).

Each row gives creates/s, p50/p99, the answers by status (5xx counted apart), the ratio to the
same-run ceiling, and the CPU each create cost the emulator and everything else (clients, function
instances), read from /proc: on two shared cores, the create that costs less CPU serves more.
`imagegen verify` runs after every imagegen row. Targets (issue 14): sequential and
8 clients >= 60 % of the ceiling with zero 5xx; the hot user without a single 5xx.

    .venv/bin/python -m bench.firebase [--duration 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.table import Table

from bench.common import UNLIMITED, console, free_port, machine_load
from bench.loop import run as on_loop
from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain.ids import new_id

JAR = Path(
    os.environ.get(
        "IMAGEGEN_FIRESTORE_EMULATOR_JAR",
        "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
    )
)
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
PROJECT = "demo-imagegen-bench"
CASE_STUDY_PROJECT = "demo-case-study"  # the ceiling's documents, apart from imagegen's (and its audit)
ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK = (
    shutil.which("functions-framework", path=str(Path(sys.executable).parent)) or "functions-framework"
)
CREDITS = 10_000_000
BODY = {"model": "model-a", "style": "anime", "color": "vibrant", "size": "512x512", "prompt": "bench"}
TARGET = 0.60


# -- the emulator and the function instances ------------------------------------------------------------
@dataclass
class Emulator:
    host: str
    pid: int


@contextmanager
def emulator(folder: Path) -> Iterator[Emulator]:
    port = free_port()
    command = [
        "java",
        "-Duser.language=en",
        "-cp",
        str(JAR),
        MAIN_CLASS,
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    with (folder / "emulator.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, process, 60)
        yield Emulator(f"127.0.0.1:{port}", process.pid)
    finally:
        stop(process)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children, from /proc."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        total += cpu_seconds([int(child) for child in children])
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args} exited")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class Instances:
    urls: list[str]
    pids: list[int]


@contextmanager
def instances(count: int, host: str, folder: Path) -> Iterator[Instances]:
    """`count` createGenerationRequest processes; each gets one client, so one request at a time.

    functions-framework's default server (gunicorn's threads, keep-alive), as deployed: an instance
    is kept to one request at a time by its load (one client), as Cloud Functions keeps it.
    """
    env = {
        **os.environ,
        **UNLIMITED,
        "FIRESTORE_EMULATOR_HOST": host,
        "IMAGEGEN_DATABASE_URL": f"firestore://{PROJECT}",
        "IMAGEGEN_DATA_DIR": str(folder / "var"),
        "IMAGEGEN_PUBLIC_URL": "http://127.0.0.1:1",
    }
    started = []
    for _ in range(count):
        port = free_port()
        command = [
            FRAMEWORK,
            "--target",
            "createGenerationRequest",
            "--source",
            str(ROOT / "functions" / "main.py"),
        ]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        with (folder / f"function-{port}.log").open("ab") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
            )
        started.append((port, process))
    try:
        for port, process in started:
            wait_for_port(port, process, 60)
        urls = [
            f"http://127.0.0.1:{port}/{PROJECT}/us-central1/createGenerationRequest" for port, _ in started
        ]
        yield Instances(urls, [process.pid for _, process in started])
    finally:
        for _, process in started:
            stop(process)


# -- results --------------------------------------------------------------------------------------------
@dataclass
class Result:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    emulator_cpu: float = 0.0  # seconds of CPU, over the whole measurement
    other_cpu: float = 0.0  # clients and function instances

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def merge(self, other: Result) -> None:
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.other_cpu += other.other_cpu

    def cpu_per_create(self) -> tuple[float, float]:
        """(emulator, everything else) in ms of CPU per create."""
        n = max(len(self.latencies), 1)
        return self.emulator_cpu * 1000 / n, self.other_cpu * 1000 / n


def run_for(seconds: float, clients: int, one: Callable[[int], int]) -> Result:
    """`clients` threads calling `one(client)` (which returns a status) until the time is up."""
    total = Result(seconds)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(n: int) -> None:
        mine = Result(seconds)
        start.wait()
        while time.monotonic() < deadline[0]:
            began = time.monotonic()
            status = one(n)
            mine.latencies.append(time.monotonic() - began)
            mine.statuses[status] += 1
        with lock:
            total.merge(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + seconds
    start.wait()
    for thread in threads:
        thread.join()
    return total


# -- the ceiling: the case study's create, written directly ------------------------------------------------
def case_study_creates(host: str, user_id: str, seconds: float) -> Result:
    """The case study's createGenerationRequest without its HTTP: a transaction, then the status update."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    from google.cloud import firestore

    db = firestore.Client(project=CASE_STUDY_PROJECT)
    users = db.collection("users")
    requests = db.collection("generationRequests")

    @firestore.transactional
    def debit(tx: firestore.Transaction, request_ref: firestore.DocumentReference, cost: int) -> None:
        user_ref = users.document(user_id)
        snap = user_ref.get(transaction=tx)
        credits = int(snap.get("credits"))
        if credits < cost:
            raise ValueError("Insufficient credits")
        tx.update(user_ref, {"credits": credits - cost})
        tx.set(
            request_ref,
            {
                "userId": user_id,
                **BODY,
                "cost": cost,
                "status": "pending",
                "createdAt": firestore.SERVER_TIMESTAMP,
            },
        )
        tx.set(
            user_ref.collection("transactions").document(),
            {
                "type": "deduction",
                "credits": cost,
                "generationRequestId": request_ref.id,
                "timestamp": firestore.SERVER_TIMESTAMP,
            },
        )

    def one(_: int) -> int:
        request_ref = requests.document()
        debit(db.transaction(), request_ref, 1)
        request_ref.update({"status": "completed", "imageUrl": f"/images/{request_ref.id}.png"})
        return 200

    try:
        before = own_cpu_seconds()
        result = run_for(seconds, 1, one)
        result.other_cpu = own_cpu_seconds() - before
        return result
    finally:
        db.close()


def ceiling(emulator: Emulator, users: list[str], seconds: float) -> Result:
    """One process per user (each its own client), as many instances of the original function."""
    before = cpu_seconds([emulator.pid])
    if len(users) == 1:
        total = case_study_creates(emulator.host, users[0], seconds)
    else:
        with multiprocessing.get_context("spawn").Pool(len(users)) as pool:
            parts = pool.starmap(case_study_creates, [(emulator.host, user, seconds) for user in users])
        total = Result(seconds)
        for part in parts:
            total.merge(part)
    total.emulator_cpu = cpu_seconds([emulator.pid]) - before
    return total


# -- imagegen through functions-framework -------------------------------------------------------------
def imagegen_creates(
    emulator: Emulator, functions: Instances, keys: list[tuple[str, str]], seconds: float
) -> Result:
    """Client n sends to instance n as user n (keys[n]); every client on one user for the hot user."""
    urls = functions.urls[: len(keys)]
    clients = [httpx.Client(timeout=120) for _ in keys]

    def one(n: int) -> int:
        user, key = keys[n]
        response = clients[n].post(
            urls[n % len(urls)], json={**BODY, "userId": user}, headers={"Authorization": f"Bearer {key}"}
        )
        return response.status_code

    before = cpu_seconds([emulator.pid]), cpu_seconds(functions.pids) + own_cpu_seconds()
    try:
        result = run_for(seconds, len(keys), one)
    finally:
        for client in clients:
            client.close()
    result.emulator_cpu = cpu_seconds([emulator.pid]) - before[0]
    result.other_cpu = cpu_seconds(functions.pids) + own_cpu_seconds() - before[1]
    return result


def warm(functions: Instances, keys: list[tuple[str, str]]) -> None:
    """One create per instance, so that no figure includes an instance's first (cold) invocation."""
    for n, url in enumerate(functions.urls):
        user, key = keys[n % len(keys)]
        httpx.post(
            url, json={**BODY, "userId": user}, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )


def verified(host: str) -> str:
    from imagegen.storage.firestore import FirestoreStorage

    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    storage = FirestoreStorage(PROJECT)
    try:
        problems = on_loop(service.verify(storage))
    finally:
        on_loop(storage.close())
    return "clean" if not problems else f"{len(problems)} violations: {problems[:3]}"


def prepare(host: str, clients: int) -> tuple[list[tuple[str, str]], list[str]]:
    """The initial data set, `clients` users with their keys, and as many users for the ceiling."""
    from imagegen.storage.firestore import FirestoreStorage

    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    storage = FirestoreStorage(PROJECT)
    try:
        on_loop(storage.migrate())
        on_loop(service.first_start(storage, utcnow()))
        keys = []
        for n in range(clients):
            _, issued = on_loop(service.create_user(storage, f"bench-{n}", CREDITS, utcnow()))
            key = issued.key
            keys.append((f"bench-{n}", key))
    finally:
        on_loop(storage.close())
    from google.cloud import firestore

    case_study = firestore.Client(project=CASE_STUDY_PROJECT)
    ceiling_users = [f"case-{n}-{new_id(4)}" for n in range(clients)]
    for user in ceiling_users:
        case_study.collection("users").document(user).set({"credits": CREDITS})
    case_study.close()
    return keys, ceiling_users


# -- the run --------------------------------------------------------------------------------------------
@dataclass
class Row:
    scenario: str
    ceiling: Result | None
    result: Result
    audit: str = ""

    def cells(self) -> list[str]:
        r = self.result
        ratio = f"{r.rate / self.ceiling.rate:.0%}" if self.ceiling else ""
        cpu = "{:.1f} / {:.1f}".format(*r.cpu_per_create())
        ceiling_cpu = "{:.1f} / {:.1f}".format(*self.ceiling.cpu_per_create()) if self.ceiling else ""
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(r.statuses.items()))
        ceiling = f"{self.ceiling.rate:,.1f}" if self.ceiling else ""
        return [
            self.scenario,
            ceiling,
            f"{r.rate:,.1f}",
            ratio,
            f"{r.percentile(0.5):.1f}",
            f"{r.percentile(0.99):.1f}",
            str(r.server_errors),
            statuses,
            ceiling_cpu,
            cpu,
            self.audit,
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--clients", type=int, default=8, help="clients, users and instances")
    args = parser.parse_args()
    if not JAR.is_file():
        raise SystemExit(f"{JAR} is missing (apt-get install google-cloud-cli-firestore-emulator)")
    folder = Path(tempfile.mkdtemp(prefix="imagegen-bench-firebase-"))
    started_load = machine_load()
    rows: list[Row] = []
    try:
        with emulator(folder) as emu:
            keys, ceiling_users = prepare(emu.host, args.clients)
            with instances(args.clients, emu.host, folder) as functions:
                warm(functions, keys)
                console.print("ceiling, sequential ...")
                seq_ceiling = ceiling(emu, ceiling_users[:1], args.duration)
                console.print(f"ceiling, {args.clients} processes on {args.clients} users ...")
                par_ceiling = ceiling(emu, ceiling_users, args.duration)
                n = args.clients
                for name, ceiling_result, clients_keys in (
                    ("sequential", seq_ceiling, keys[:1]),
                    (f"{n} clients, {n} users, {n} instances", par_ceiling, keys),
                    (f"hot user: {n} clients, 1 user, {n} instances", None, [keys[0]] * n),
                ):
                    console.print(f"imagegen, {name} ...")
                    result = imagegen_creates(emu, functions, clients_keys, args.duration)
                    rows.append(Row(name, ceiling_result, result, verified(emu.host)))
    finally:
        if os.environ.get("BENCH_KEEP"):
            console.print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    table = Table(title="g: Firebase, createGenerationRequest vs the case study's create (same run)")
    for column in (
        "scenario",
        "ceiling /s",
        "imagegen /s",
        "vs ceiling",
        "p50 ms",
        "p99 ms",
        "5xx",
        "answers",
        "ceiling CPU ms",
        "imagegen CPU ms",
        "verify",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.cells())
    console.print(table)
    verdicts = [
        (rows[0].result.rate >= TARGET * rows[0].ceiling.rate and rows[0].result.server_errors == 0)  # type: ignore[union-attr]
        if rows[0].ceiling
        else False,
        (rows[1].result.rate >= TARGET * rows[1].ceiling.rate and rows[1].result.server_errors == 0)  # type: ignore[union-attr]
        if rows[1].ceiling
        else False,
        rows[2].result.server_errors == 0,
    ]
    console.print(
        f"targets (>= {TARGET:.0%} of the ceiling, zero 5xx; hot user zero 5xx): "
        + ", ".join("met" if v else "MISSED" for v in verdicts)
    )
    console.print("CPU ms: per create, the emulator's / everything else's (clients, function instances)")
    console.print(
        f"load average: {started_load} at the start, {machine_load()} at the end; "
        f"{statistics.mean(len(r.result.latencies) for r in rows):.0f} creates per row on average"
    )


if __name__ == "__main__":
    main()
