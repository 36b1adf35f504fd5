"""What metrics and request ids cost the create route: the same deployment with both on and off.

    .venv/bin/python -m bench.observe --backend sqlite|postgres [--duration 15 --rounds 2]

Two deployments from clones of one template run side by side, one with the defaults
(`IMAGEGEN_METRICS` and `IMAGEGEN_REQUEST_IDS` on), one with both off; they are loaded in turn
(off, on, off, on, ...), so that the drift of a shared machine falls on both alike. Each turn
measures the no-op route and the spread create (POST /v1/generations, queued only, as in
scenario a of bench.http); the figure is the create's req/s with both on over with both off (the
target: at most 10 % lost), and the same for the no-op route (what the middleware costs a request
that does nothing else).
"""

from __future__ import annotations

import argparse

from bench.common import (
    Load,
    Row,
    Server,
    console,
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
from bench.http import Options, ceiling, deployment

OFF = {"IMAGEGEN_METRICS": "false", "IMAGEGEN_REQUEST_IDS": "false"}
MAX_LOSS = 0.10


def summed(loads: list[Load]) -> Load:
    return Load(
        requests=sum(load.requests for load in loads),
        seconds=sum(load.seconds for load in loads),
        p50_ms=sum(load.p50_ms for load in loads) / len(loads),
        p99_ms=sum(load.p99_ms for load in loads) / len(loads),
        max_ms=max(load.max_ms for load in loads),
        errors=sum(load.errors for load in loads),
        non_2xx=sum(load.non_2xx for load in loads),
    )


def spread(server: Server, keys: str, options: Options) -> Load:
    return options.measure(server, "create.lua", {"BENCH_PATH": "/v1/generations", "BENCH_KEYS": keys})


def walk_keys(server: Server, keys: str, options: Options) -> None:
    env = {"BENCH_PATH": "/v1/generations", "BENCH_KEYS": keys, "BENCH_SEQUENTIAL": "1"}
    env["BENCH_THREADS"] = str(options.threads)
    walks = 1 if server.database.backend == "sqlite" else 4 * server.api_processes
    for _ in range(walks):
        wrk(
            server.url,
            "create.lua",
            options.key_warmup,
            env,
            connections=options.connections,
            threads=options.threads,
        )


def run(backend: str, options: Options, rounds: int) -> list[Row]:
    require_wrk()
    load_at_start = machine_load()
    with workspace(backend) as space:
        template, keys = prepare_template(space)
        on = deployment(space.database("on", template), workers=False, options=options)
        off = deployment(space.database("off", template), workers=False, options=options)
        off.env.update(OFF)
        loads: dict[str, dict[str, list[Load]]] = {"on": {"noop": [], "create": []}}
        loads["off"] = {"noop": [], "create": []}
        with on, off:
            console.print(f"metrics and request ids on and off: two deployments of {on.describe()}")
            for server in (off, on):
                walk_keys(server, str(keys.spread), options)
            for turn in range(rounds):
                for name, server in (("off", off), ("on", on)):
                    console.print(f"   round {turn + 1}: {name}")
                    loads[name]["noop"].append(ceiling(server, options))
                    loads[name]["create"].append(spread(server, str(keys.spread), options))
    rows = rows_for({name: {kind: summed(v) for kind, v in runs.items()} for name, runs in loads.items()})
    note = (
        f"{rounds} rounds, loaded in turn (off, on); {options.connections} connections, "
        f"{options.threads} wrk threads, {options.duration:.0f} s each after a {options.warmup:.0f} s "
        f"warm-up; {load_at_start} at the start, {machine_load()} at the end"
    )
    print_table(f"Metrics and request ids on {backend}: on vs off", rows, note)
    return rows


def rows_for(total: dict[str, dict[str, Load]]) -> list[Row]:
    off, on = total["off"], total["on"]
    rows = [
        load_row("no-op POST, metrics and request ids off", off["noop"], off["noop"]),
        load_row("no-op POST, on", on["noop"], off["noop"]),
        load_row("create POST /v1/generations, off", off["create"], off["noop"]),
    ]
    created = load_row("create POST /v1/generations, on", on["create"], on["noop"])
    kept = on["create"].rps / off["create"].rps if off["create"].rps else 0.0
    created.detail = f"{kept:.1%} of the create's rate with both off"
    clean = all(load.errors == 0 and load.non_2xx == 0 for load in (on["create"], off["create"]))
    rows.append(judge(created, f">= {1 - MAX_LOSS:.0%} of off, no errors", kept >= 1 - MAX_LOSS and clean))
    rows[1].detail = f"{on['noop'].rps / off['noop'].rps:.1%} of off" if off["noop"].rps else ""
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of discarded load before each")
    parser.add_argument("--rounds", type=int, default=2, help="turns of off then on")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args()
    options = Options(args.duration, args.warmup, connections=args.connections, threads=args.threads)
    rows = run(args.backend, options, args.rounds)
    save_rows(None, args.backend, rows)


if __name__ == "__main__":
    main()
