"""HTTP throughput with wrk, each figure next to the same server's no-op ceiling (POST /_bench/noop).

    .venv/bin/python -m bench.http --backend sqlite|postgres [--duration 15 --warmup 3 --only a,b,c]

a. create on POST /v1/generations, enqueue only (no job workers), spread over 10,000 users and on
   one hot user;
b. create on the case-study route POST /createGenerationRequest, which answers when the job is done
   (workers on, zero model latency), spread and hot;
c. GET /getUserCredits?userId= for a user with 10,000 ledger entries (the first page of 50).

Each server is measured against its own no-op route, POST /_bench/noop (it reads a body of a
create's size and answers 200), right before and right after its scenarios (the mean is the
ceiling): the ratio says how much of what the framework could serve on this machine, in this run,
the route keeps. GET /healthz, the lightest route there is, is shown beside it for reference.
Before the spread runs, a warm-up walks all 10,000 users (on PostgreSQL 8 times, in separate wrk
runs), so that every API process has seen each key, as on a server that has been up for a while (a
key's first use reads it from the database).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Database,
    Keys,
    Load,
    Row,
    Server,
    Workspace,
    console,
    drain,
    judge,
    load_row,
    machine_load,
    prepare_template,
    print_table,
    require_wrk,
    save_rows,
    workspace,
    wrk,
)

CREATE_SHARE_OF_CEILING = 0.40
CREATE_P99_MS = 50.0
HOT_SHARE_OF_SPREAD = 0.50


@dataclass(frozen=True)
class Options:
    duration: float = 15.0
    warmup: float = 3.0
    key_warmup: float = 8.0  # long enough to walk all 10,000 users once (run once per walk)
    connections: int = 64
    threads: int = 2
    workers: int = 4

    def measure(self, server: Server, script: str, env: dict[str, str] | None = None) -> Load:
        """A discarded warm-up, then the measured run, with the same wrk settings."""
        settings = {"connections": self.connections, "threads": self.threads}
        if self.warmup > 0:
            wrk(server.url, script, self.warmup, env, **settings)
        load = wrk(server.url, script, self.duration, env, **settings)
        server.check()
        return load


def deployment(database: Database, *, workers: bool, options: Options) -> Server:
    """SQLite: one `imagegen serve`; PostgreSQL: 2 API processes (+ 1 worker process if `workers`)."""
    if database.backend == "sqlite":
        return Server(database, workers=options.workers if workers else 0)
    return Server(database, api_processes=2, workers=options.workers, worker_process=workers)


def ceiling(server: Server, options: Options) -> Load:
    return options.measure(server, "noop.lua", {"BENCH_PATH": "/_bench/noop"})


def healthz(server: Server, options: Options, ceiling: Load) -> Row:
    load = options.measure(server, "noop.lua", {"BENCH_PATH": "/healthz", "BENCH_METHOD": "GET"})
    row = load_row("   for reference: GET /healthz", load, ceiling)
    row.detail = "the lightest route: a GET without a body or a key"
    return row


def ceiling_row(label: str, before: Load, after: Load) -> tuple[Load, Row]:
    """The no-op route measured before and after the server's scenarios, averaged.

    The cores are shared with wrk and with whatever else runs on the machine: a ceiling measured on
    both sides of the scenarios shows (and halves) the drift between them.
    """
    mean = Load(
        requests=before.requests + after.requests,
        seconds=before.seconds + after.seconds,
        p50_ms=(before.p50_ms + after.p50_ms) / 2,
        p99_ms=(before.p99_ms + after.p99_ms) / 2,
        max_ms=max(before.max_ms, after.max_ms),
        errors=before.errors + after.errors,
        non_2xx=before.non_2xx + after.non_2xx,
    )
    row = load_row(f"{label}: no-op POST /_bench/noop (mean of before/after)", mean, mean)
    row.detail = f"before {before.rps:,.0f}, after {after.rps:,.0f} req/s"
    return mean, row


def creates(server: Server, keys: Keys, path: str, options: Options, noop: Load | None = None) -> list[Load]:
    """Spread and hot at saturation; with `noop`, also spread paced at the target share of it."""
    every_key_once = {
        "BENCH_PATH": path,
        "BENCH_KEYS": str(keys.spread),
        "BENCH_SEQUENTIAL": "1",
        "BENCH_THREADS": str(options.threads),
    }
    settings = {"connections": options.connections, "threads": options.threads}
    # Each API process keeps its own cache, and the kernel deals each wrk run's connections out
    # among the processes, unevenly (16/48 of 64 seen) and the same for the whole run: walking again
    # in the same run sends a user down much the same connections. So several processes walk in
    # separate wrk runs, each dealt anew; a key a process has not seen costs it a database read
    # during the measured run (3 walks in one run left the first spread figure 25-50 % low).
    walks = 1 if server.database.backend == "sqlite" else 4 * server.api_processes
    for _ in range(walks):
        wrk(server.url, "create.lua", options.key_warmup, every_key_once, **settings)
    spread = options.measure(server, "create.lua", {"BENCH_PATH": path, "BENCH_KEYS": str(keys.spread)})
    hot = options.measure(server, "create.lua", {"BENCH_PATH": path, "BENCH_KEYS": str(keys.hot)})
    if noop is None:
        return [spread, hot]
    # Latency is judged at the target load, not at saturation (where even the no-op route's p99 is
    # the queue of 64 connections on two shared cores): each connection pauses so that together
    # they offer the target share of the no-op rate.
    env = {"BENCH_PATH": path, "BENCH_KEYS": str(keys.spread), "BENCH_DELAY_MS": pause(options, noop)}
    paced = options.measure(server, "create.lua", env)
    return [spread, hot, paced]


def pause(options: Options, noop: Load) -> str:
    """The pause after each answer that makes the connections offer the target share of `noop`."""
    return f"{options.connections * 1000 / (CREATE_SHARE_OF_CEILING * noop.rps):.2f}"


def paced_noop(server: Server, options: Options, noop: Load, paced: Load) -> Row:
    """The no-op route paced exactly as the create was: the framework's own latency at that load."""
    load = options.measure(
        server, "noop.lua", {"BENCH_PATH": "/_bench/noop", "BENCH_DELAY_MS": pause(options, noop)}
    )
    row = load_row("   for reference: no-op POST paced the same", load, noop)
    row.detail = f"the framework's own p99 at that pacing (the create's: {paced.p99_ms:.1f} ms)"
    return row


def create_rows(
    label: str, spread: Load, hot: Load, noop: Load, users: int, paced: Load | None = None
) -> list[Row]:
    spread_row = judge(
        load_row(f"{label}: spread over {users:,} users", spread, noop),
        f">= {CREATE_SHARE_OF_CEILING:.0%} of no-op, no errors",
        spread.rps >= CREATE_SHARE_OF_CEILING * noop.rps and clean(spread),
    )
    paced_rows = []
    if paced is not None:
        row = load_row(
            f"{label}: spread, 64 connections paced to {CREATE_SHARE_OF_CEILING:.0%} of no-op", paced, noop
        )
        row.detail = "latency at the target load"
        paced_rows.append(
            judge(
                row,
                f"p99 <= {CREATE_P99_MS:.0f} ms, no errors",
                paced.p99_ms <= CREATE_P99_MS and clean(paced),
            )
        )
    hot_row = load_row(f"{label}: one hot user", hot, noop)
    hot_row.detail = f"{hot.rps / spread.rps:.0%} of spread" if spread.rps else ""
    judge(
        hot_row,
        f">= {HOT_SHARE_OF_SPREAD:.0%} of spread, no errors",
        hot.rps >= HOT_SHARE_OF_SPREAD * spread.rps and clean(hot),
    )
    return [spread_row, *paced_rows, hot_row]


def clean(load: Load) -> bool:
    return load.errors == 0 and load.non_2xx == 0


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def scenario_a(space: Workspace, template: Database, keys: Keys, options: Options) -> list[Row]:
    database = space.database("a", template)
    with deployment(database, workers=False, options=options) as server:
        console.print(f"a. POST /v1/generations, enqueue only: {server.describe()}")
        before = ceiling(server, options)
        spread, hot, paced = creates(server, keys, "/v1/generations", options, before)
        paced_reference = paced_noop(server, options, before, paced)
        noop, noop_row = ceiling_row("a", before, ceiling(server, options))
        reference = healthz(server, options, noop)
    space.drop(database)
    users = count_lines(keys.spread)
    rows = create_rows("a. /v1 create (queued)", spread, hot, noop, users, paced)
    return [noop_row, reference, *rows[:2], paced_reference, *rows[2:]]


def scenario_b_c(
    space: Workspace, template: Database, keys: Keys, options: Options, only: set[str]
) -> list[Row]:
    database = space.database("b", template)
    loads: list[Load] = []
    with deployment(database, workers=True, options=options) as server:
        console.print(f"b/c. case-study routes, workers on: {server.describe()}")
        before = ceiling(server, options)
        if "b" in only:
            loads += creates(server, keys, "/createGenerationRequest", options)
            left, seconds = drain(server)
            console.print(f"   b left {left:,} jobs unfinished; the workers finished them in {seconds:.1f} s")
        if "c" in only:
            loads.append(options.measure(server, "credits.lua", {"BENCH_KEYS": str(keys.ledger)}))
        noop, noop_row = ceiling_row("b/c", before, ceiling(server, options))
    space.drop(database)
    rows = [noop_row]
    if "b" in only:
        label = "b. createGenerationRequest (done)"
        rows += create_rows(label, loads[0], loads[1], noop, count_lines(keys.spread))
    if "c" in only:
        row = load_row("c. getUserCredits, 10,000 entries", loads[-1], noop)
        rows.append(judge(row, "no errors (no figure set)", clean(loads[-1])))
    return rows


def run(backend: str, options: Options, only: set[str], rows_out: Path | None = None) -> list[Row]:
    require_wrk()
    load_at_start = machine_load()
    with workspace(backend) as space:
        template, keys = prepare_template(space)
        rows: list[Row] = []
        if "a" in only:
            rows += scenario_a(space, template, keys, options)
        if only & {"b", "c"}:
            rows += scenario_b_c(space, template, keys, options, only)
    note = (
        f"{options.connections} connections, {options.threads} wrk threads, {options.duration:.0f} s each "
        f"after a {options.warmup:.0f} s warm-up; err = connect/read/write/timeout errors; "
        f"vs ceiling = req/s over the same server's no-op POST /_bench/noop; {load_at_start} at the start, "
        f"{machine_load()} at the end"
    )
    print_table(f"HTTP on {backend}", rows, note)
    save_rows(rows_out, backend, rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of discarded load before each")
    parser.add_argument(
        "--key-warmup",
        type=float,
        default=8.0,
        help="seconds of each walk over every user before the spread runs",
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=4, help="job threads (scenario b)")
    parser.add_argument("--only", default="a,b,c", help="scenarios to run, e.g. a or b,c")
    parser.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = Options(
        args.duration, args.warmup, args.key_warmup, args.connections, args.threads, args.workers
    )
    run(args.backend, options, set(args.only.split(",")), args.rows_out)


if __name__ == "__main__":
    main()
