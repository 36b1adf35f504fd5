"""Server memory after 1,000,000 requests: VmRSS of every server process at 0, 25, 50 and 100 %.

    .venv/bin/python -m bench.memory --backend sqlite|postgres [--requests 1000000 | --quick]

The deployment runs as in production, workers on (SQLite: one `imagegen serve`; PostgreSQL: 2 API
processes and 1 worker process). wrk sends a mix over 10,000 users: --create-share (90 %) creates on
POST /v1/generations (202, queued; the workers run them meanwhile and fall behind, so the queue grows
as it would under a burst) and the rest GET /getUserCredits. Creates are most of the mix because
they are the path that holds state (group-commit batches, futures, the key cache, jobs) and because
getUserCredits is slow on SQLite (~650 req/s, see bench/README.md): at half and half, 1,000,000
requests took 40 minutes (450 req/s), at 90 % about 16. wrk runs in slices sized to land on each
checkpoint; after each slice every process's VmRSS is read from /proc/PID/status.

Target: no process above 250 MB after the last checkpoint (the SQLite deployment is one process, so
there it is the whole server). The growth from the first checkpoint to the last tells a leak from a
warm-up: caches fill early, a leak keeps climbing.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Row,
    Server,
    console,
    judge,
    machine_load,
    mb,
    prepare_template,
    print_table,
    process_name,
    require_wrk,
    save_rows,
    workspace,
    wrk,
)
from bench.http import Options, deployment

LIMIT_BYTES = 250 * 2**20
CHECKPOINTS = (0.25, 0.50, 1.0)
MAX_SLICE_SECONDS = 30.0


@dataclass(frozen=True)
class Sample:
    requests: int
    rss: dict[int, int]  # pid -> bytes

    @property
    def total(self) -> int:
        return sum(self.rss.values())

    @property
    def largest(self) -> int:
        return max(self.rss.values(), default=0)


def drive(server: Server, env: dict[str, str], total: int, connections: int) -> tuple[list[Sample], int]:
    """Runs wrk in slices until `total` requests; samples RSS at 0 and at each checkpoint."""
    samples = [Sample(0, server.rss())]
    done = errors = 0
    rate = 0.0
    started = time.monotonic()
    for share in CHECKPOINTS:
        target = int(total * share)
        while done < target:
            seconds = 5.0 if rate == 0 else min(MAX_SLICE_SECONDS, max(1.0, (target - done) / rate))
            load = wrk(server.url, "mix.lua", seconds, env, connections=connections)
            server.check()
            done += load.requests
            errors += load.errors + load.non_2xx
            rate = done / (time.monotonic() - started)
            console.print(f"  {done:>10,} requests, {rate:,.0f} req/s, server RSS {mb(server_rss(server))}")
        samples.append(Sample(done, server.rss()))
    return samples, errors


def server_rss(server: Server) -> int:
    return sum(server.rss().values())


def run(
    backend: str, total: int, create_share: float, connections: int, rows_out: Path | None = None
) -> list[Row]:
    require_wrk()
    with workspace(backend) as space:
        template, keys = prepare_template(space)
        database = space.database("memory", template)
        server = deployment(database, workers=True, options=Options())
        with server:
            console.print(f"f. memory over {total:,} requests: {server.describe()}")
            env = {"BENCH_KEYS": str(keys.spread), "BENCH_CREATE_SHARE": str(create_share)}
            samples, errors = drive(server, env, total, connections)
            names = {pid: process_name(pid) for pid in server.pids()}
    rows = _rows(samples, names, errors)
    note = (
        f"mix: {create_share:.0%} POST /v1/generations, the rest GET /getUserCredits, over 10,000 users; "
        f"{connections} connections; RSS = VmRSS; {machine_load()}"
    )
    print_table(f"Memory on {backend}", rows, note)
    save_rows(rows_out, backend, rows)
    return rows


def _rows(samples: list[Sample], names: dict[int, str], errors: int) -> list[Row]:
    rows = []
    for sample in samples:
        parts = ", ".join(f"{names.get(pid, '?')} {mb(rss)}" for pid, rss in sorted(sample.rss.items()))
        rows.append(
            Row(scenario=f"f. RSS after {sample.requests:,} requests", figure=mb(sample.total), detail=parts)
        )
    last, first_loaded = samples[-1], samples[1]
    rows[-1].errors = str(errors)
    rows[-1].ratio = f"+{mb(last.total - first_loaded.total)} since {first_loaded.requests:,}"
    judge(rows[-1], f"every process <= {mb(LIMIT_BYTES)}", last.largest <= LIMIT_BYTES)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 requests instead of 1,000,000")
    parser.add_argument("--create-share", type=float, default=0.9, help="share of creates in the mix")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = 100_000 if args.quick else args.requests
    run(args.backend, total, args.create_share, args.connections, args.rows_out)


if __name__ == "__main__":
    main()
