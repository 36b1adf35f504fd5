"""The weekly report over 1,000,000 requests in one week: its time, and memory that does not grow.

    .venv/bin/python -m bench.report_1m --backend sqlite|postgres [--requests 1000000]

A fresh database gets 1,000,000 generation requests spread evenly over one ISO week (in time order,
as an append-only table fills; ~95 % completed, ~5 % failed, over the catalog's models, styles,
colors and sizes and 10,000 users), and --small-requests (100,000) in a week
`service.BASELINE_WEEKS` + 2 weeks earlier, so that neither report's baseline sees the other. The
rows go straight into the table with SQLAlchemy Core executemany in chunks of 10,000, marked as
imported history (no ledger entries).

Then, in a fresh child process per week, `service.run_report` runs 3 times (the median is the
figure), once more under tracemalloc (peak Python allocations), and the child's peak RSS over the
runs is read from /proc (VmHWM after resetting it, minus VmRSS before). Memory is flat when the
report over 1,000,000 rows peaks no higher than twice the one over 100,000 rows (1 MB of slack):
a report that loaded its rows would need ten times as much.

The ceiling is a bare `SELECT sum(cost)` over the same week: the least any report must do is read
each of the week's rows once.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from bench.common import (
    Database,
    Row,
    console,
    create_users,
    judge,
    machine_load,
    mb,
    open_db,
    print_table,
    progress,
    save_rows,
    workspace,
)
from bench.loop import run as on_loop
from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.domain.catalog import INITIAL_DATA
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.adapter import SqlStorage

CHUNK = 10_000
USERS = 10_000
REPORT_SECONDS = 2.0
FLAT_FACTOR = 2.0
gr = t.generation_requests


# -- loading ------------------------------------------------------------------------------------
def rows_for(week: reports.Period, count: int, first_id: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """`count` requests evenly over the week, oldest first, as the table's columns."""
    models = [m.name for m in INITIAL_DATA.models]
    styles, colors = list(INITIAL_DATA.styles), list(INITIAL_DATA.colors)
    sizes = list(INITIAL_DATA.sizes.items())
    step = (week.end - week.start) / count
    for n in range(count):
        created = week.start + step * n
        started = created + timedelta(milliseconds=rng.randint(1, 50))
        size, cost = rng.choice(sizes)
        failed = rng.random() < 0.05
        yield {
            "id": f"bench{first_id + n:015d}",
            "user_id": f"bench-u{rng.randrange(USERS):05d}",
            "model": rng.choice(models),
            "style": rng.choice(styles),
            "color": rng.choice(colors),
            "size": size,
            "prompt": "",
            "cost": cost,
            "status": "failed" if failed else "completed",
            "error": "simulated failure" if failed else None,
            "image_url": None if failed else f"/images/bench{first_id + n:015d}.png",
            "attempts": 1,
            "source": "import",
            "created_at": created,
            "started_at": started,
            "completed_at": started + timedelta(milliseconds=rng.randint(150, 450)),
        }


def load(storage: SqlStorage, weeks: list[tuple[reports.Period, int]]) -> float:
    """Inserts the weeks' rows in chunks with a progress bar; returns rows per second."""
    rng = random.Random(1)
    total = sum(count for _, count in weeks)
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"{storage.tx.dialect}: loading {total:,} requests", total=total)
        first_id = 0
        for week, count in weeks:
            chunk: list[dict[str, Any]] = []
            for row in rows_for(week, count, first_id, rng):
                chunk.append(row)
                if len(chunk) == CHUNK:
                    _insert(storage, chunk)
                    bar.advance(task, len(chunk))
                    chunk = []
            if chunk:
                _insert(storage, chunk)
                bar.advance(task, len(chunk))
            first_id += count
    _analyze(storage)
    return total / (time.perf_counter() - started)


def _insert(storage: SqlStorage, rows: list[dict[str, Any]]) -> None:
    with storage.tx.write() as conn:
        conn.execute(insert(gr), rows)


def _analyze(storage: SqlStorage) -> None:
    """Fresh planner statistics, as autovacuum or a routine ANALYZE would leave them."""
    with storage.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


# -- measuring (in a child process, so that its memory is the report's alone) ----------------------
def measure(url: str, week: str, runs: int) -> dict[str, Any]:
    storage = SqlStorage(url)
    period = reports.iso_week(week)
    now = period.end + timedelta(days=1)
    ceiling = _count_seconds(storage, period)
    rss_before = own_memory("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        on_loop(service.run_report(storage, period, now))
        times.append(time.perf_counter() - started)
    peak_rss = own_memory("VmHWM:") - rss_before
    tracemalloc.start()
    on_loop(service.run_report(storage, period, now))
    _, peak_python = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    phases = _phases(storage, period)
    on_loop(storage.close())
    return {
        "times": times,
        "phases": phases,
        "count_seconds": ceiling,
        "peak_rss": peak_rss,
        "peak_python": peak_python,
    }


def _phases(storage: SqlStorage, period: reports.Period) -> dict[str, float]:
    """Seconds of each of the report's queries over the week, to show where the time goes."""
    calls = {
        "group_counts": lambda: on_loop(storage.group_counts(period.start, period.end)),
        "unique_users": lambda: on_loop(storage.unique_users(period.start, period.end)),
        "histogram": lambda: on_loop(
            storage.generation_time_histogram(period.start, period.end, reports.TIME_BUCKET_MS)
        ),
    }
    seconds = {}
    for name, call in calls.items():
        started = time.perf_counter()
        call()
        seconds[name] = time.perf_counter() - started
    return seconds


def _count_seconds(storage: SqlStorage, period: reports.Period) -> float:
    query = select(func.sum(gr.c.cost)).where(gr.c.created_at >= period.start, gr.c.created_at < period.end)
    with storage.tx.read() as conn:
        conn.execute(query).scalar_one()  # warm, as the report's median is
        started = time.perf_counter()
        conn.execute(query).scalar_one()
        return time.perf_counter() - started


def own_memory(field: str) -> int:
    """VmRSS or VmHWM (the peak RSS) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_in_child(database: Database, week: str, runs: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.report_1m", "--child", database.url, week, "--runs", str(runs)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"report child failed:\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# -- the benchmark ------------------------------------------------------------------------------------
def run(backend: str, requests: int, small: int, runs: int = 3, rows_out: Path | None = None) -> list[Row]:
    big_week = reports.previous_week(utcnow())
    small_week = _weeks_back(big_week, service.BASELINE_WEEKS + 2)
    with workspace(backend) as space:
        database = space.database("report")
        storage = open_db(database)
        create_users(storage, [f"bench-u{n:05d}" for n in range(USERS)], 1, utcnow(), lambda n: None)
        rate = load(storage, [(small_week, small), (big_week, requests)])
        storage.close()
        console.print(f"loaded {requests + small:,} requests at {rate:,.0f} rows/s; measuring reports")
        big = measure_in_child(database, big_week.id, runs)
        little = measure_in_child(database, small_week.id, runs)
    rows = _rows(requests, small, big, little)
    note = (
        f"{big_week.id}: {requests:,} requests; {small_week.id}: {small:,}; median of {runs} runs each in a "
        f"fresh process; ceiling = SELECT sum(cost) over the week; peak = tracemalloc (Python) and "
        f"VmHWM - VmRSS (process); {machine_load()}"
    )
    print_table(f"Report on {backend}", rows, note)
    save_rows(rows_out, backend, rows)
    return rows


def _weeks_back(week: reports.Period, n: int) -> reports.Period:
    return reports.week_of(week.start - reports.WEEK * n)


def _rows(requests: int, small: int, big: dict[str, Any], little: dict[str, Any]) -> list[Row]:
    median = statistics.median(big["times"])
    time_row = Row(
        scenario=f"e. report over {requests:,} requests in a week",
        figure=f"{median:.2f} s",
        detail=f"{little_median(little):.2f} s over {small:,}",
        ratio=f"{big['count_seconds'] / median:.0%} (sum(cost) {big['count_seconds']:.2f} s)",
    )
    judge(time_row, f"<= {REPORT_SECONDS:.0f} s", median <= REPORT_SECONDS)
    phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in big["phases"].items())
    time_row.detail += f"; {phases}"
    flat = big["peak_python"] <= FLAT_FACTOR * little["peak_python"] + 2**20
    memory_row = Row(
        scenario=f"e. report peak memory, {requests:,} vs {small:,} rows",
        figure=f"{mb(big['peak_python'])} vs {mb(little['peak_python'])}",
        detail=f"peak RSS +{mb(big['peak_rss'])} vs +{mb(little['peak_rss'])}",
    )
    judge(memory_row, f"flat: <= {FLAT_FACTOR:.0f}x the smaller week's", flat)
    return [time_row, memory_row]


def little_median(result: dict[str, Any]) -> float:
    return float(statistics.median(result["times"]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"])
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests in the measured week")
    parser.add_argument("--small-requests", type=int, default=100_000, help="requests in the smaller week")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("URL", "WEEK"), help=argparse.SUPPRESS)
    parser.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.runs)))
        return
    if args.backend is None:
        parser.error("--backend is required")
    console.print(f"e. report over {args.requests:,} requests on {args.backend}")
    run(args.backend, args.requests, args.small_requests, args.runs, args.rows_out)


if __name__ == "__main__":
    main()
