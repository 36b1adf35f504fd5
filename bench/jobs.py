"""Jobs completed per second with zero model latency.

    .venv/bin/python -m bench.jobs --backend sqlite|postgres [--jobs 2000 --workers 4]

N generations are queued through the service (debited, pending) while nothing runs them; then the
deployment's workers start (SQLite: one `imagegen serve`; PostgreSQL: one `imagegen serve --role
worker`) and the bench waits until every job is terminal. The rate is N over the time from the first
job's start to the last one's end, read from the database, so process start-up is not counted.

The ceiling is what the simulated model alone costs: drawing and encoding the same 512x512 PNG in
one thread of this process, as many times a second as it can. The ratio says how much of the
workers' time is left for the model once claiming, storing the image and completing are paid.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.common import (
    Database,
    Row,
    Server,
    console,
    judge,
    machine_load,
    open_db,
    prepare_template,
    print_table,
    progress,
    save_rows,
    unfinished,
    workspace,
)
from bench.loop import run as on_loop
from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain.generation import GenerationSpec, Status
from imagegen.models.simulated import draw_png
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.adapter import SqlStorage

BODY = {
    "model": "model-a",
    "style": "anime",
    "color": "vibrant",
    "size": "512x512",
    "prompt": "A cat sitting on a futuristic throne",
}
gr = t.generation_requests
QUEUE_BATCH = 64


def enqueue(storage: SqlStorage, users: list[str], jobs: int) -> None:
    async def create(n: int) -> None:
        body = {**BODY, "userId": users[n % len(users)]}
        await service.create_generation(storage, body, now=utcnow())

    async def queue(bar: Any, task: Any) -> None:
        for start in range(0, jobs, QUEUE_BATCH):  # a batch at a time: the debits are group-committed
            batch = range(start, min(start + QUEUE_BATCH, jobs))
            await asyncio.gather(*(create(n) for n in batch))
            bar.advance(task, len(batch))

    with progress() as bar:
        on_loop(queue(bar, bar.add_task(f"queueing {jobs:,} jobs", total=jobs)))


def span(storage: SqlStorage) -> tuple[float, dict[str, int]]:
    """Seconds from the first start to the last completion, and how many jobs ended how."""
    with storage.tx.read() as conn:
        first, last = conn.execute(select(func.min(gr.c.started_at), func.max(gr.c.completed_at))).one()
        statuses = dict(conn.execute(select(gr.c.status, func.count()).group_by(gr.c.status)).all())
    return (last - first).total_seconds(), statuses


def wait_done(storage: SqlStorage, server: Server, jobs: int, timeout: float, started: float) -> float:
    with progress() as bar:
        task = bar.add_task("running jobs", total=jobs)
        while (left := unfinished(storage)) > 0:
            server.check()
            bar.update(task, completed=jobs - left)
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{left} jobs still unfinished after {timeout:.0f} s")
            time.sleep(0.2)
    return time.monotonic() - started


def model_ceiling(samples: int = 40) -> float:
    """Jobs a second if drawing the PNG were a job's only cost (one thread, like the GIL allows)."""
    spec = GenerationSpec("u", BODY["model"], BODY["style"], BODY["color"], BODY["size"], BODY["prompt"])
    draw_png(spec)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        draw_png(spec)
        times.append(time.perf_counter() - start)
    return 1 / statistics.median(times)


def start_workers(database: Database, workers: int) -> Server:
    if database.backend == "sqlite":
        return Server(database, workers=workers).start()
    server = Server(database, workers=workers)
    server.start_worker()
    time.sleep(0.5)
    server.check()
    return server


def run(backend: str, jobs: int, workers: int, rows_out: Path | None = None) -> list[Row]:
    with workspace(backend) as space:
        template, _ = prepare_template(space, users=1_000)
        database = space.database("jobs", template)
        storage = open_db(database)
        users = [f"bench-u{n:05d}" for n in range(1_000)]
        enqueue(storage, users, jobs)
        ceiling = model_ceiling()
        load_before = machine_load()
        started = time.monotonic()
        server = start_workers(database, workers)
        try:
            wall = wait_done(storage, server, jobs, max(600.0, jobs / 2), started)
        finally:
            server.stop()
        seconds, statuses = span(storage)
        on_loop(storage.close())
    rate = jobs / seconds
    what = "1 process" if backend == "sqlite" else "1 worker process"
    row = Row(
        scenario=f"d. jobs, zero model latency ({what}, {workers} threads)",
        figure=f"{rate:,.0f} jobs/s",
        errors=f"{statuses.get('failed', 0)} failed",
        ratio=f"{rate / ceiling:.0%}",
        detail=f"draw-only ceiling {ceiling:,.0f}/s; {seconds:.1f} s first start to last end",
    )
    judge(row, f"all {jobs:,} completed (no figure set)", statuses.get(Status.COMPLETED.value, 0) == jobs)
    note = (
        f"{jobs:,} jobs; first start to last end {seconds:.2f} s (wall incl. process start {wall:.1f} s); "
        f"draw-only ceiling = one thread drawing the same PNG; {load_before} -> {machine_load()}"
    )
    print_table(f"Jobs on {backend}", [row], note)
    save_rows(rows_out, backend, [row])
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4, help="job threads in the worker process")
    parser.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    console.print(f"d. jobs per second on {args.backend}")
    run(args.backend, args.jobs, args.workers, args.rows_out)


if __name__ == "__main__":
    main()
