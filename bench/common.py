"""What every benchmark shares: databases cloned from a prepared template, servers, wrk, results.

A benchmark run prepares one template database per backend (the initial data set, 10,000 spread
users, one hot user and one user with 10,000 ledger entries, their keys written to files the wrk
scripts read), clones it for each scenario so that no scenario sees another's rows, starts
`imagegen serve` as a subprocess with the limits raised, and drives it with wrk.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import httpx
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import func, insert, select, update

from bench.loop import run as on_loop
from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain.generation import Status
from imagegen.domain.ids import new_id
from imagegen.domain.ledger import EntryType
from imagegen.runtime import open_storage
from imagegen.settings import Settings
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.adapter import SqlStorage

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "lua"
IMAGEGEN = shutil.which("imagegen", path=str(Path(sys.executable).parent)) or "imagegen"
POSTGRES_ENV = "BENCH_POSTGRES_URL"
POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgres")

SPREAD_USERS = 10_000
SPREAD_CREDITS = 1_000_000
HOT_USER = "bench-hot"
HOT_CREDITS = 1_000_000_000
LEDGER_USER = "bench-ledger"
LEDGER_ENTRIES = 10_000

# Raised so that neither the per-process rate limit nor the in-flight limit answers 429 in a benchmark.
UNLIMITED = {
    "IMAGEGEN_RATE_PER_USER_PER_SECOND": "1000000000",
    "IMAGEGEN_RATE_BURST_PER_USER": "1000000000",
    "IMAGEGEN_MAX_IN_FLIGHT_PER_USER": "1000000000",
    "AI_FAILURE_RATE": "0",
    "IMAGEGEN_MODEL_LATENCY_MS": "0",
    "IMAGEGEN_BENCH_ROUTES": "1",  # POST /_bench/noop: the ceiling every figure is compared with
}

console = Console(highlight=False, width=max(200, shutil.get_terminal_size().columns))


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    # `timeout` and `kill` send SIGTERM, which by default ends Python without running `finally`
    # blocks: the servers under test would be left running and spoil the next benchmark.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _stop_on_sigterm)
T = TypeVar("T")
# open_storage logs the first start's keys as warnings: the bench keeps its own key files.
logging.getLogger("imagegen").setLevel(logging.ERROR)


# -- databases ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Database:
    backend: str
    url: str
    data_dir: Path


@dataclass
class Keys:
    """Files of `userId key` lines for the wrk scripts, and the admin key."""

    spread: Path
    hot: Path
    ledger: Path
    admin: str


class Workspace:
    """A temporary folder plus, on PostgreSQL, the databases this run created (dropped at the end)."""

    def __init__(self, backend: str, keep: bool = bool(os.environ.get("BENCH_KEEP"))) -> None:
        if backend not in BACKENDS:
            raise SystemExit(f"--backend must be one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix=f"imagegen-bench-{backend}-"))
        self.tag = f"{os.getpid()}"
        self.admin_url = os.environ.get(POSTGRES_ENV, POSTGRES_DEFAULT)
        self.created: list[str] = []

    def database(self, name: str, template: Database | None = None) -> Database:
        """A new empty database, or a copy of `template`."""
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.backend == "sqlite":
            path = data_dir / "imagegen.db"
            if template is not None:
                shutil.copyfile(template.data_dir / "imagegen.db", path)
                _copy_keys_file(template.data_dir, data_dir)
            return Database("sqlite", f"sqlite:///{path}", data_dir)
        db_name = f"imagegen_bench_{name}_{self.tag}"
        statement = f"CREATE DATABASE {db_name}"
        if template is not None:
            statement += f" TEMPLATE {template.url.rpartition('/')[2]}"
            _copy_keys_file(template.data_dir, data_dir)
        _pg_admin(self.admin_url, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)", statement)
        self.created.append(db_name)
        return Database("postgres", f"{self.admin_url.rpartition('/')[0]}/{db_name}", data_dir)

    def drop(self, database: Database) -> None:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        for log in database.data_dir.glob("*.log"):  # kept until close(), or for good with BENCH_KEEP=1
            shutil.move(log, logs / f"{database.data_dir.name}-{log.name}")
        if database.backend == "postgres":
            name = database.url.rpartition("/")[2]
            _pg_admin(self.admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            self.created.remove(name)
        shutil.rmtree(database.data_dir, ignore_errors=True)

    def close(self) -> None:
        for name in list(self.created):
            _pg_admin(self.admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if self.keep:
            console.print(f"kept {self.root} (BENCH_KEEP)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def _pg_admin(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _copy_keys_file(source: Path, target: Path) -> None:
    keys = source / "initial-keys.txt"
    if keys.exists():
        shutil.copyfile(keys, target / "initial-keys.txt")


def open_db(database: Database) -> SqlStorage:
    """Migrates and loads the initial data set (its keys go to <data dir>/initial-keys.txt)."""
    storage = on_loop(open_storage(Settings(database_url=database.url, data_dir=database.data_dir)))
    assert isinstance(storage, SqlStorage)
    return storage


def unfinished(storage: SqlStorage) -> int:
    """Jobs queued or running."""
    open_states = [Status.PENDING.value, Status.RUNNING.value]
    gr = t.generation_requests
    with storage.tx.read() as conn:
        return int(conn.execute(select(func.count()).where(gr.c.status.in_(open_states))).scalar_one())


def drain(server: Server, timeout: float = 600.0) -> tuple[int, float]:
    """Waits until the deployment's workers have finished every job; (jobs left at the start, seconds).

    A route that answers before its job is done (a wait that timed out, a client that gave up)
    leaves work behind: measured meanwhile, the next scenario would share the cores with it.
    """
    storage = open_db(server.database)
    try:
        started, left = time.monotonic(), unfinished(storage)
        at_start = left
        with progress() as bar:
            task = bar.add_task(f"draining {left:,} unfinished jobs", total=left)
            while left > 0:
                server.check()
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"{left} jobs still unfinished after {timeout:.0f} s")
                time.sleep(0.2)
                left = unfinished(storage)
                bar.update(task, completed=at_start - left)
        return at_start, time.monotonic() - started
    finally:
        on_loop(storage.close())


def prepare_template(space: Workspace, users: int = SPREAD_USERS) -> tuple[Database, Keys]:
    """The database every HTTP scenario starts from, and the key files that go with it."""
    template = space.database("template")
    storage = open_db(template)
    now = utcnow()
    spread = [f"bench-u{n:05d}" for n in range(users)]
    with progress() as bar:
        task = bar.add_task(f"{space.backend}: creating {users:,} users", total=users + 2)
        tick = functools.partial(bar.advance, task)
        spread_keys = create_users(storage, spread, SPREAD_CREDITS, now, tick)
        hot_keys = create_users(storage, [HOT_USER], HOT_CREDITS, now, tick)
        ledger_keys = create_users(storage, [LEDGER_USER], 1, now, tick)
    # The opening grant plus 9,999 more: 10,000 ledger entries.
    _fill_ledger(storage, LEDGER_USER, LEDGER_ENTRIES - 1, now)
    _checkpoint(storage)
    on_loop(storage.close())
    keys = Keys(
        spread=_write_keys(space.root / "keys-spread.txt", spread_keys),
        hot=_write_keys(space.root / "keys-hot.txt", hot_keys),
        ledger=_write_keys(space.root / "keys-ledger.txt", ledger_keys),
        admin=_admin_key(template.data_dir),
    )
    return template, keys


def create_users(
    storage: SqlStorage, ids: list[str], credits: int, now: datetime, tick: Callable[[int], None]
) -> list[tuple[str, str]]:
    """What `service.create_user` writes (the user, its opening grant, a hashed key), in bulk.

    Through the service it is two transactions per user, 25 s for 10,000 users on SQLite and 80 s on
    PostgreSQL; as executemany in chunks it is about a second.
    """
    pairs = [(user_id, service.new_key()) for user_id in ids]
    for chunk in _chunks(pairs, 2_000):
        with storage.tx.write() as conn:
            conn.execute(
                insert(t.users), [{"id": u, "credits": credits, "created_at": now} for u, _ in chunk]
            )
            entries = [_grant(u, credits, credits, "opening balance", now) for u, _ in chunk if credits]
            if entries:
                conn.execute(insert(t.ledger), entries)
            conn.execute(insert(t.api_keys), [_key_row(u, k, now) for u, k in chunk])
        tick(len(chunk))
    return pairs


def _fill_ledger(storage: SqlStorage, user_id: str, entries: int, now: datetime) -> None:
    """`entries` grants of 1 credit after the opening balance, newest last, the balance kept in step."""
    opening = on_loop(storage.get_user(user_id))
    assert opening is not None
    rows = [_grant(user_id, 1, opening.credits + n, f"bench grant {n}", now) for n in range(1, entries + 1)]
    with storage.tx.write() as conn:
        conn.execute(insert(t.ledger), rows)
        conn.execute(update(t.users).where(t.users.c.id == user_id).values(credits=opening.credits + entries))


def _grant(user_id: str, delta: int, balance: int, reason: str, now: datetime) -> dict[str, object]:
    return {
        "id": new_id(),
        "user_id": user_id,
        "type": EntryType.GRANT.value,
        "delta": delta,
        "balance_after": balance,
        "reason": reason,
        "created_at": now,
    }


def _key_row(user_id: str, key: str, now: datetime) -> dict[str, object]:
    return {"id": new_id(), "key_hash": service.hash_key(key), "user_id": user_id, "created_at": now}


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _checkpoint(storage: SqlStorage) -> None:
    """Folds SQLite's WAL into the main file, so that copying the file copies everything."""
    if storage.tx.dialect == "sqlite":
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _write_keys(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{user} {key}\n" for user, key in pairs))
    path.chmod(0o600)
    return path


def _admin_key(data_dir: Path) -> str:
    for line in (data_dir / "initial-keys.txt").read_text().splitlines():
        if line.startswith("admin "):
            return line.split()[1]
    raise RuntimeError("no admin key in initial-keys.txt")


# -- servers ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(database: Database, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any imagegen setting, plus exactly the bench's settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_") and k != "AI_FAILURE_RATE"}
    return {
        **base,
        **UNLIMITED,
        "IMAGEGEN_DATABASE_URL": database.url,
        "IMAGEGEN_DATA_DIR": str(database.data_dir),
        "IMAGEGEN_HOST": "127.0.0.1",
        "IMAGEGEN_PORT": str(port),
        **(extra or {}),
    }


@dataclass
class Server:
    """The deployment under test: one `imagegen serve` (SQLite) or API processes plus a worker (PG)."""

    database: Database
    api_processes: int = 1
    workers: int = 4  # job threads: in the one process on SQLite, in the worker process on PostgreSQL
    worker_process: bool = False
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started_pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        if self.database.backend == "sqlite":
            return f"1 process (API + {self.workers} job threads)"
        worker = f" + 1 worker process ({self.workers} job threads)" if self.worker_process else ", no worker"
        return f"{self.api_processes} API processes{worker}"

    def start(self) -> Server:
        if self.database.backend == "sqlite":
            self._spawn("serve", [], {"IMAGEGEN_WORKERS": str(self.workers)})
        else:
            self._spawn("api", ["--role", "api", "--processes", str(self.api_processes)], {})
            if self.worker_process:
                self.start_worker()
        self._wait_ready()
        return self

    def start_worker(self) -> subprocess.Popen[bytes]:
        process = self._spawn("worker", ["--role", "worker"], {"IMAGEGEN_WORKERS": str(self.workers)})
        self.started_pids.add(process.pid)
        return process

    def check(self) -> None:
        """Fails when a process of the deployment exited or was replaced since the start.

        A figure measured while a process was gone means nothing. uvicorn's supervisor kills and
        replaces an API process that misses its 5 s health check (a starved event loop); on a shared
        machine another session's `pkill` may end one too.
        """
        for process in self.processes:
            if process.poll() is not None:
                code = process.returncode
                raise ServerDied(f"process {process.pid} exited with {code}; logs:\n{self.logs()}")
        gone = self.started_pids - set(self.pids())
        if gone:
            raise ServerDied(f"processes {sorted(gone)} of the deployment went away; logs:\n{self.logs()}")

    def logs(self) -> str:
        """The last lines of each of the deployment's logs (the folder goes when the run ends)."""
        tails = []
        for log in sorted(self.database.data_dir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-8:]
            tails.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(tails)

    def _spawn(self, name: str, args: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        env = server_env(self.database, self.port, extra)
        log = (self.database.data_dir / f"{name}-{self.port}.log").open("ab")
        # A session of its own, so that stop() can signal the process and the children it forks.
        process = subprocess.Popen(
            [IMAGEGEN, "serve", *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited {process.returncode}; see {self.database.data_dir}")
            if self._answers() and self._all_api_processes_up():
                time.sleep(0.5)
                self.started_pids = set(self.pids())
                return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:.0f} s; see logs in {self.database.data_dir}")

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _all_api_processes_up(self) -> bool:
        # uvicorn's supervisor forks one child per API process: wait until all of them exist.
        if self.api_processes == 1:
            return True
        return len(descendants(self.processes[0].pid)) >= self.api_processes

    def pids(self) -> list[int]:
        pids: list[int] = []
        for process in self.processes:
            if process.poll() is None:
                pids += [process.pid, *descendants(process.pid)]
        return pids

    def rss(self) -> dict[int, int]:
        """VmRSS in bytes of every process of the deployment (supervisor, API processes, worker)."""
        return {pid: rss for pid in self.pids() if (rss := vm_rss(pid)) is not None}

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerDied(RuntimeError):
    pass


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        direct = [int(p) for p in children.read_text().split()]
    except OSError:
        return found
    for child in direct:
        found += [child, *descendants(child)]
    return found


def vm_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def process_name(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in args if a)
    if "resource_tracker" in text:
        return "resource tracker"
    if "spawn_main" in text:
        return "api child"
    if "--role worker" in text:
        return "worker"
    if "--role api" in text:
        return "api supervisor"
    return "serve"


# -- wrk ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # connect, read, write and timeout errors
    non_2xx: int  # answers with a status of 400 or more (wrk counts 3xx as success too)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(
    url: str,
    script: str,
    seconds: float,
    env: dict[str, str] | None = None,
    *,
    connections: int = 64,
    threads: int = 2,
) -> Load:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(LUA / script),
        url,
    ]
    result = subprocess.run(
        command,
        env={**os.environ, "BENCH_LUA_DIR": str(LUA), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return _load(json.loads(line.removeprefix("BENCH_JSON ")))
    raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _load(raw: dict[str, float]) -> Load:
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return Load(
        requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=int(errors),
        non_2xx=int(raw["status"]),
    )


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit(
            "wrk is not installed: apt-get update && apt-get install -y wrk (or make bench-deps)"
        )


# -- results ------------------------------------------------------------------------------------------
@dataclass
class Row:
    scenario: str
    figure: str
    p50: str = ""
    p99: str = ""
    errors: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # PASS, FAIL or "" (no target)
    detail: str = ""


def load_row(scenario: str, load: Load, ceiling: Load | None) -> Row:
    return Row(
        scenario=scenario,
        figure=f"{load.rps:,.0f} req/s",
        p50=f"{load.p50_ms:.1f} ms",
        p99=f"{load.p99_ms:.1f} ms",
        errors=f"{load.errors}/{load.non_2xx}",
        ratio=f"{load.rps / ceiling.rps:.0%}" if ceiling and ceiling.rps else "",
    )


def judge(row: Row, target: str, passed: bool) -> Row:
    row.target = target
    row.verdict = "PASS" if passed else "FAIL"
    return row


def print_table(title: str, rows: list[Row], note: str = "") -> None:
    table = Table(title=title, title_justify="left", show_lines=False)
    for name, justify in (
        ("scenario", "left"),
        ("figure", "right"),
        ("p50", "right"),
        ("p99", "right"),
        ("err/non-2xx", "right"),
        ("vs ceiling", "right"),
        ("target", "left"),
        ("", "left"),
        ("detail", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        verdict = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]"}.get(row.verdict, row.verdict)
        cells = (row.scenario, row.figure, row.p50, row.p99, row.errors, row.ratio, row.target, verdict)
        table.add_row(*cells, row.detail)
    console.print(table)
    if note:
        console.print(note)


def save_rows(path: Path | None, backend: str, rows: list[Row]) -> None:
    """Appends the rows as JSON lines, so that bench.all can print one table from several modules."""
    if path is None:
        return
    with path.open("a") as out:
        for row in rows:
            out.write(json.dumps({"backend": backend, **row.__dict__}) + "\n")


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def workspace(backend: str, keep: bool = bool(os.environ.get("BENCH_KEEP"))) -> Iterator[Workspace]:
    space = Workspace(backend, keep)
    try:
        yield space
    finally:
        space.close()


def machine_load() -> str:
    """The 1-minute load average: wrk and the server share the cores with whatever else runs."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"
