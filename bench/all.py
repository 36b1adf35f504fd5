"""Every benchmark on one backend, one after the other, then one table with all the figures.

    .venv/bin/python -m bench.all --backend sqlite|postgres [--quick] [--memory-requests N]

Each benchmark runs as its own process (bench.http, bench.jobs, bench.report_1m, bench.memory), so
that none inherits another's memory or connections; each prints its own table as it ends. --quick
shortens the HTTP runs to 5 s, the report to 200,000 requests and the memory run to 100,000.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, console, machine_load, print_table, require_wrk, save_rows


def commands(backend: str, quick: bool, memory_requests: int | None) -> list[list[str]]:
    http = ["--duration", "5", "--warmup", "2"] if quick else []
    report = ["--requests", "200000", "--small-requests", "20000"] if quick else []
    memory = ["--requests", str(memory_requests or (100_000 if quick else 1_000_000))]
    return [
        ["bench.http", *http],
        ["bench.jobs"],
        ["bench.report_1m", *report],
        ["bench.memory", *memory],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-requests", type=int, help="requests for bench.memory")
    args = parser.parse_args()
    require_wrk()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        rows_file = Path(folder) / "rows.jsonl"
        for module, *options in commands(args.backend, args.quick, args.memory_requests):
            command = [sys.executable, "-m", module, "--backend", args.backend, *options]
            command += ["--rows-out", str(rows_file)]
            console.rule(f"{module} {' '.join(options)}")
            child = subprocess.Popen(command)
            try:
                returncode = child.wait()
            finally:  # stopped ourselves (SIGTERM, Ctrl-C): stop the benchmark and its servers too
                if child.poll() is None:
                    child.terminate()
                    child.wait(60)
            if returncode != 0:
                failed = Row(scenario=f"{module} did not finish", figure="", verdict="FAIL")
                save_rows(rows_file, args.backend, [failed])
        rows = [_row(json.loads(line)) for line in rows_file.read_text().splitlines()]
    minutes = (time.monotonic() - started) / 60
    verdicts = [row.verdict for row in rows if row.verdict]
    summary = f"{verdicts.count('PASS')} PASS, {verdicts.count('FAIL')} FAIL"
    console.rule()
    print_table(
        f"imagegen on {args.backend}: all benchmarks ({summary})",
        rows,
        f"{minutes:.0f} min in all; {machine_load()} at the end",
    )


def _row(data: dict[str, str]) -> Row:
    data.pop("backend", None)
    return Row(**data)


if __name__ == "__main__":
    main()
