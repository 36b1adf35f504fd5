"""The `imagegen` command: a thin shell over the service layer, one short function per subcommand."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from imagegen import service
from imagegen.clock import utcnow
from imagegen.domain import reports
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.errors import ImagegenError
from imagegen.domain.generation import iso
from imagegen.domain.keys import ApiKey
from imagegen.engines.registry import Registry
from imagegen.ports import Storage
from imagegen.reporting import render_html, render_markdown
from imagegen.runtime import Runtime, open_storage
from imagegen.service import transfer
from imagegen.settings import Settings

app = typer.Typer(
    help="imagegen: a backend that sells AI image generation for credits.", no_args_is_help=True
)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
credits_app = typer.Typer(help="Move credits.", no_args_is_help=True)
models_app = typer.Typer(help="Bind models to engines, set their own prices.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Manage API keys on the server's machine (how to recover a lost admin key).", no_args_is_help=True
)
app.add_typer(users_app, name="users")
app.add_typer(credits_app, name="credits")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="sqlite:///path, postgresql://... or firestore://PROJECT [env IMAGEGEN_DATABASE_URL]",
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Images, SQLite file, key file [env IMAGEGEN_DATA_DIR; ./var]"),
]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        messages = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        _fail(f"invalid settings: {messages}")


T = TypeVar("T")


def _with_storage(
    database_url: str | None, data_dir: Path | None, use: Callable[[Storage], Awaitable[T]]
) -> T:
    """Runs one command on its own event loop: opens the storage, `use`s it, closes it."""
    settings = _settings(database_url=database_url, data_dir=data_dir)

    async def command() -> T:
        storage = await open_storage(settings)
        try:
            return await use(storage)
        finally:
            await storage.close()

    try:
        return asyncio.run(command())
    except ImagegenError as exc:
        _fail(exc.message, code=1, problems=exc.details.get("problems"))


def _fail(message: str, code: int = 2, problems: Any = None) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    for problem in problems if isinstance(problems, list) else ():
        typer.secho(f"  {problem.field}: {problem.message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class Role(StrEnum):
    all = "all"
    api = "api"
    worker = "worker"
    scheduler = "scheduler"


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [env IMAGEGEN_HOST; 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env IMAGEGEN_PORT; 8080]")] = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No API keys (loopback only)")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Job workers in this process [env IMAGEGEN_WORKERS; 4]")
    ] = None,
    role: Annotated[
        Role | None, typer.Option(help="all (default), api, worker or scheduler [env IMAGEGEN_ROLE]")
    ] = None,
    processes: Annotated[
        int | None, typer.Option(help="HTTP API processes for api/all [env IMAGEGEN_PROCESSES; 1]")
    ] = None,
) -> None:
    """Serve imagegen: by default one process runs the HTTP API, the job workers and the scheduler."""
    overrides = {
        "host": host,
        "port": port,
        "database_url": database_url,
        "data_dir": data_dir,
        "no_auth": no_auth or None,
        "workers": workers,
        "role": role.value if role else None,
        "processes": processes,
    }
    settings = _settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs each request's whole URL at INFO: a webhook's query may carry the receiver's token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Migrate and load the initial data once, before any child process or thread races to do it.
    asyncio.run(_prepare(settings))
    if not settings.serves_http:
        _run_background(settings)
        return
    import uvicorn

    from imagegen import serving

    # Child processes build their own Settings from the environment: hand the flags down that way.
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"IMAGEGEN_{name.upper()}"] = str(value)
    uvicorn.run(
        "imagegen.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.processes,
        http=serving.PROTOCOL,  # httptools with header limits and timeouts (see imagegen.serving)
        timeout_keep_alive=settings.keep_alive_seconds,
        access_log=False,
        log_level="info",
    )


async def _prepare(settings: Settings) -> None:
    storage = await open_storage(settings)
    await storage.close()


def _run_background(settings: Settings) -> None:
    """A worker or scheduler process: no HTTP, runs until SIGTERM or SIGINT."""
    asyncio.run(_background(settings))


async def _background(settings: Settings) -> None:
    log = logging.getLogger("imagegen")
    runtime = await Runtime.build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for received in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(received, _stopping, received, stop)
    await runtime.start()
    log.info("%s process running; stop with SIGTERM", settings.role)
    await stop.wait()
    await runtime.stop()


def _stopping(received: signal.Signals, stop: asyncio.Event) -> None:
    logging.getLogger("imagegen").info("%s: stopping", received.name)
    stop.set()


@users_app.command("create")
def users_create(
    user_id: Annotated[str, typer.Argument(help="The new user's id")],
    credits: Annotated[int, typer.Option(help="Opening balance")] = 0,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Create a user; the new API key is printed alone on the last line."""
    user, issued = _with_storage(
        database_url, data_dir, lambda storage: service.create_user(storage, user_id, credits, utcnow())
    )
    typer.echo(f"created user {user.id} with {user.credits} credits; key id {issued.id}; API key:", err=True)
    typer.echo(issued.key)


@keys_app.command("create")
def keys_create(
    user_id: Annotated[str | None, typer.Argument(help="The user the key acts for")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key, acting on every user")] = False,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key for USER, or an admin key with --admin; the key is printed alone on the last line."""
    if admin == (user_id is not None):
        _fail("give a USER or --admin (one of them)")

    async def create(storage: Storage) -> service.IssuedKey:
        if user_id is not None:
            await service.get_user(storage, user_id)
        return await service.issue_key(storage, user_id, utcnow())

    issued = _with_storage(database_url, data_dir, create)
    typer.echo(
        f"created {'an admin key' if admin else f'a key for {user_id}'}, id {issued.id}; API key:", err=True
    )
    typer.echo(issued.key)


@keys_app.command("list")
def keys_list(
    user_id: Annotated[str | None, typer.Argument(help="Only this user's keys (default: every key)")] = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """List keys (never the keys themselves): id, who, created, last used, revoked."""

    async def listed(storage: Storage) -> list[ApiKey]:
        if user_id is not None:
            await service.get_user(storage, user_id)
        return await service.list_keys(storage, user_id)

    keys = _with_storage(database_url, data_dir, listed)
    typer.echo("id\tuser\tcreated\tlast_used\trevoked")
    for key in keys:
        when = [iso(key.created_at) or "-", iso(key.last_used_at) or "-", iso(key.revoked_at) or "-"]
        typer.echo("\t".join([key.id, key.user_id or "(admin)", *when]))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (`imagegen keys list`)")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke a key at once: every running process refuses it from its next request."""
    _with_storage(database_url, data_dir, lambda storage: service.revoke_key(storage, key_id, utcnow()))
    typer.echo(f"revoked key {key_id}")


@credits_app.command("grant", context_settings={"ignore_unknown_options": True})
def credits_grant(
    user_id: Annotated[str, typer.Argument(help="The user")],
    amount: Annotated[int, typer.Argument(help="> 0 grants; < 0 adjusts down (never below 0)")],
    reason: Annotated[str, typer.Option(help="Why: kept in the ledger")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Grant credits to a user (or adjust them down), with a reason kept in the ledger."""
    entry = _with_storage(
        database_url,
        data_dir,
        lambda storage: service.move_credits(storage, user_id, amount, reason, utcnow()),
    )
    typer.echo(f"{entry.type.value} of {entry.credits} to {user_id}: balance {entry.balance_after}")


@models_app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="The catalog model")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Print a model's settings, binding and own prices as JSON."""
    found = _with_storage(database_url, data_dir, lambda storage: service.model_settings(storage, model))
    _print_model(found)


@models_app.command("bind")
def models_bind(
    model: Annotated[str, typer.Argument(help="The catalog model")],
    file: Annotated[
        Path, typer.Argument(help='The binding, {"deployments": [...]} (docs/engines.md); - for stdin')
    ],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Bind a model to its deployments, validated first (every problem is listed); replaces its binding."""
    try:
        data = json.loads(sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        _fail(f"cannot read a JSON binding from {file}: {exc}")
    registry = Registry.discover()
    bound = _with_storage(
        database_url, data_dir, lambda storage: service.bind_model(storage, registry, model, data)
    )
    _print_model(bound)


@models_app.command("unbind")
def models_unbind(
    model: Annotated[str, typer.Argument(help="The catalog model")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Drop a model's binding: it runs the simulated engine (its failure rate and latency) again."""
    _print_model(_with_storage(database_url, data_dir, lambda storage: service.unbind_model(storage, model)))


@models_app.command("prices")
def models_prices(
    model: Annotated[str, typer.Argument(help="The catalog model")],
    prices: Annotated[list[str] | None, typer.Argument(help="SIZE=CREDITS ..., replacing its prices")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Drop its prices: the sizes' costs apply")] = False,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Show a model's own prices, or set them (SIZE=CREDITS ...) or --clear them."""
    if clear and prices:
        _fail("give prices or --clear, not both")
    if not clear and not prices:
        found = _with_storage(database_url, data_dir, lambda storage: service.model_settings(storage, model))
        typer.echo(json.dumps(dict(found.prices)))
        return
    wanted: dict[str, object] = {}
    for pair in prices or ():
        size, sep, credits = pair.partition("=")
        if not sep:
            _fail(f"'{pair}' is not SIZE=CREDITS")
        wanted[size] = int(credits) if credits.strip().lstrip("-").isdigit() else credits
    updated = _with_storage(
        database_url, data_dir, lambda storage: service.set_prices(storage, model, wanted)
    )
    typer.echo(json.dumps(dict(updated.prices)))


def _print_model(model: ModelSettings) -> None:
    body = {
        "name": model.name,
        "failureRate": model.failure_rate,
        "latencyMs": model.latency_ms,
        "enabled": model.enabled,
        "engines": [d["engine"] for d in model.deployments] or ["simulated"],
        "deployments": model.binding_json()["deployments"],
        "prices": dict(model.prices),
    }
    typer.echo(json.dumps(body, indent=2, ensure_ascii=False))


@app.command("export")
def export(
    file: Annotated[Path, typer.Argument(help="JSONL file to write ('-' for stdout)")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Export users, requests, ledger entries and reports as JSONL in the case study's field names."""
    out = sys.stdout if str(file) == "-" else file.open("w", encoding="utf-8")
    counts: dict[str, int] = {}

    async def write(storage: Storage) -> None:
        async for record in storage.export_records():
            out.write(json.dumps(transfer.to_case_study(record), ensure_ascii=False) + "\n")
            counts[record["collection"]] = counts.get(record["collection"], 0) + 1

    with out:
        _with_storage(database_url, data_dir, write)
    typer.echo(f"exported {_counts(counts)}", err=True)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="JSONL file to read", exists=True, dir_okay=False)],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Import JSONL (idempotent by id); a bad line aborts the whole import, which then writes nothing."""
    with _progress(file) as lines:
        counts = _with_storage(
            database_url,
            data_dir,
            lambda storage: storage.import_records(transfer.parse_lines(lines), utcnow()),
        )
    typer.echo(f"imported {_counts(counts)}")


@app.command()
def verify(database_url: DatabaseUrl = None, data_dir: DataDir = None) -> None:
    """Audit invariants 1-3 over the whole database; exit 1 if anything is wrong."""
    violations = _with_storage(database_url, data_dir, service.verify)
    for violation in violations:
        typer.echo(f"invariant {violation.invariant}: {violation.message}")
    if violations:
        _fail(f"{len(violations)} violation(s)", code=1)
    typer.echo("ok: every balance matches its ledger and every request its deduction and refunds")


class Format(StrEnum):
    json = "json"
    md = "md"
    html = "html"


@app.command()
def report(
    week: Annotated[str | None, typer.Option(help="An ISO week, e.g. 2026-W47")] = None,
    last_7_days: Annotated[
        bool, typer.Option("--last-7-days", help="The 7 days ending now (default)")
    ] = False,
    format: Annotated[Format, typer.Option("--format", help="json, md or html (with charts)")] = Format.json,  # noqa: A002
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout")] = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Run (or re-run) the usage report for a week or the last 7 days, store it, and print it."""
    if week and last_7_days:
        _fail("give --week or --last-7-days, not both")
    now = utcnow()
    period = _run(service.parse_period, week, now=now)

    async def run(storage: Storage) -> tuple[dict[str, Any], str]:
        document = await service.run_report(storage, period, now)
        return document, await _render(storage, document, period, format)

    document, text = _with_storage(database_url, data_dir, run)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"report {document['id']} written to {output}", err=True)


async def _render(storage: Storage, document: dict[str, Any], period: reports.Period, format: Format) -> str:  # noqa: A002
    if format is Format.md:
        return render_markdown(document)
    if format is Format.html:
        return render_html(document, await service.report_history(storage, period))
    return json.dumps(document, indent=2)


@app.command()
def expect(
    report_id: Annotated[str, typer.Argument(help="The report, e.g. 2026-W47")],
    metric: Annotated[str, typer.Option(help="The finding's metric, e.g. failureRate or share")],
    dimension: Annotated[
        str | None, typer.Option(help="For a per-key finding: model, style, size or color")
    ] = None,
    key: Annotated[str | None, typer.Option(help="For a per-key finding: the key, e.g. 1024x1792")] = None,
    note: Annotated[str, typer.Option(help="Why it was expected")] = "",
    undo: Annotated[bool, typer.Option("--undo", help="Take this report's mark off the finding")] = False,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Mark a report's finding as expected: the next weeks withhold the same pattern unless it grows."""
    if (dimension is None) != (key is None):
        _fail("give both --dimension and --key for a per-key finding, or neither")
    if dimension is not None and dimension not in reports.DIMENSIONS:
        _fail(f"--dimension must be one of {', '.join(reports.DIMENSIONS)}")
    finding = reports.FindingId(metric, dimension, key)
    changed = _with_storage(
        database_url,
        data_dir,
        lambda storage: service.mark_expected(storage, report_id, finding, note, utcnow(), expected=not undo),
    )
    typer.echo(json.dumps(changed, indent=2))


@app.command()
def backfill(
    from_week: Annotated[str, typer.Option("--from", help="First ISO week, e.g. 2026-W01")],
    to_week: Annotated[str, typer.Option("--to", help="Last ISO week, included")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Run the weekly report for every ISO week in a range, oldest first (after an import)."""
    weeks = _run(service.weeks_between, from_week, to_week)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    ) as bar:
        task = bar.add_task("backfilling reports", total=len(weeks))

        async def run(storage: Storage) -> int:
            anomalies = 0
            for week in weeks:
                document = await service.run_report(storage, week, utcnow())
                anomalies += len(document["anomalies"])
                bar.update(task, advance=1, description=f"report {week.id}")
            return anomalies

        anomalies = _with_storage(database_url, data_dir, run)
    typer.echo(f"reported {len(weeks)} weeks ({weeks[0].id} to {weeks[-1].id}); {anomalies} anomalies")


def _run(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except ImagegenError as exc:
        _fail(exc.message, code=1)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items()) or "nothing"


class _progress:
    """Yields a file's lines while a progress bar follows the bytes read (on a terminal)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bar = Progress(
            TextColumn("importing"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            transient=True,
        )

    def __enter__(self) -> Iterator[str]:
        self.bar.start()
        task = self.bar.add_task("import", total=self.path.stat().st_size)
        self.file = self.path.open("rb")

        def lines() -> Iterator[str]:
            for raw in self.file:
                self.bar.advance(task, len(raw))
                yield raw.decode("utf-8", errors="replace")

        return lines()

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.bar.stop()


def main() -> None:
    app()
