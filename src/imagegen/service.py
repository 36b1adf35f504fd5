"""imagegen's use cases, written against the storage port: one atomic storage call per state change.

The HTTP API, the CLI, the workers, the scheduler and the Cloud Functions all call these functions;
none of them talks to a database directly.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from imagegen.domain import reports
from imagegen.domain.audit import Violation
from imagegen.domain.catalog import INITIAL_DATA, Catalog, InitialData, ModelSettings
from imagegen.domain.errors import (
    GenerationNotFound,
    InvalidInput,
    InvalidState,
    NotFound,
    Unauthenticated,
    UserNotFound,
)
from imagegen.domain.generation import ID_RULE, GenerationRequest, NewGeneration, Status, valid_id
from imagegen.domain.ids import new_id
from imagegen.domain.keys import ApiKey
from imagegen.domain.ledger import EntryType, LedgerEntry, LedgerFilter
from imagegen.domain.paging import Page
from imagegen.domain.users import User
from imagegen.domain.validation import (
    InvalidGeneration,
    cursor_problem,
    idempotency_key_problem,
    parse_generation,
    parse_webhook,
    text_problem,
)
from imagegen.ports import Storage

KEY_PREFIX = "ig_"
BASELINE_WEEKS = 12  # the recent 8 weeks for one-week rules, and older reference weeks for drifts


# -- generations ----------------------------------------------------------------------------
def create_generation(
    storage: Storage,
    body: object,
    *,
    max_prompt_length: int,
    now: datetime,
    idempotency_key: str | None = None,
    authorize: Callable[[str], None] = lambda user_id: None,
    allow_private_webhooks: bool = False,
    max_in_flight: int | None = None,
) -> tuple[GenerationRequest, bool]:
    """Validates, prices, debits and enqueues in one transaction; (request, False) for a replay.

    `authorize(user_id)` runs after validation and before anything is written.
    """
    new = prepare_generation(
        storage.catalog(),
        body,
        max_prompt_length=max_prompt_length,
        now=now,
        idempotency_key=idempotency_key,
        authorize=authorize,
        allow_private_webhooks=allow_private_webhooks,
        max_in_flight=max_in_flight,
    )
    return storage.debit_and_enqueue(new)


def prepare_generation(
    catalog: Catalog,
    body: object,
    *,
    max_prompt_length: int,
    now: datetime,
    idempotency_key: str | None = None,
    authorize: Callable[[str], None] = lambda user_id: None,
    allow_private_webhooks: bool = False,
    max_in_flight: int | None = None,
) -> NewGeneration:
    """A create validated and priced against `catalog`, ready to debit (no I/O: the event loop runs it)."""
    check_idempotency_key(idempotency_key)
    try:
        spec = parse_generation(body, catalog, max_prompt_length=max_prompt_length)
        assert isinstance(body, Mapping)
        webhook, events = parse_webhook(body, allow_private=allow_private_webhooks)
    except InvalidGeneration as exc:
        raise InvalidInput(str(exc), problems=exc.problems) from exc
    authorize(spec.user_id)
    return NewGeneration(
        id=new_id(),
        spec=spec,
        cost=catalog.cost_of(spec.size),
        created_at=now,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint({**asdict(spec), "webhook": webhook, "events": sorted(events)})
        if idempotency_key
        else None,
        webhook=webhook,
        webhook_events=events,
        max_in_flight=max_in_flight,
    )


def list_generations(
    storage: Storage, user_id: str | None, status: str | None, *, limit: int, cursor: str | None
) -> Page[GenerationRequest]:
    if user_id is not None:
        check_user_id(user_id)
    check_cursor(cursor)
    try:
        wanted = Status(status) if status else None
    except ValueError as exc:
        allowed = ", ".join(s.value for s in Status)
        raise InvalidInput(f"Invalid status '{status}'. Valid values: {allowed}") from exc
    return storage.list_requests(user_id, wanted, limit, cursor)


def fingerprint(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def get_generation(storage: Storage, request_id: str) -> GenerationRequest:
    if not valid_id(request_id):
        raise InvalidInput(f"Invalid generation id '{request_id[:80]}': {ID_RULE}")
    request = storage.get_request(request_id)
    if request is None:
        raise GenerationNotFound(request_id)
    return request


def cancel_generation(storage: Storage, request_id: str, now: datetime) -> GenerationRequest:
    if not storage.cancel_and_refund(request_id, now):
        request = get_generation(storage, request_id)
        raise InvalidState(
            f"Only a pending request can be canceled; this one is {request.status.value}",
            id=request_id,
            currentStatus=request.status.value,
        )
    return get_generation(storage, request_id)


# -- users and credits ----------------------------------------------------------------------
def check_user_id(user_id: str) -> str:
    if not valid_id(user_id):
        raise InvalidInput(f"Invalid userId '{user_id[:80]}': {ID_RULE}")
    return user_id


def check_idempotency_key(key: str | None) -> None:
    """The same rule for the Idempotency-Key of every route that takes one (an empty one included)."""
    problem = None if key is None else idempotency_key_problem(key)
    if problem:
        raise InvalidInput(problem)


def check_cursor(cursor: str | None) -> None:
    problem = None if cursor is None else cursor_problem(cursor)
    if problem:
        raise InvalidInput(problem)


def get_user(storage: Storage, user_id: str) -> User:
    user = storage.get_user(check_user_id(user_id))
    if user is None:
        raise UserNotFound(user_id)
    return user


def get_credits(
    storage: Storage, user_id: str, *, limit: int, cursor: str | None
) -> tuple[User, Page[LedgerEntry]]:
    check_cursor(cursor)
    user = get_user(storage, user_id)
    return user, storage.ledger(user_id, limit, cursor)


def create_user(storage: Storage, user_id: str, credits: int, now: datetime) -> tuple[User, str]:
    """Creates a user with an opening grant and returns the user's new API key."""
    check_user_id(user_id)
    if credits < 0:
        raise InvalidInput("credits must be 0 or more")
    user = storage.create_user(user_id, credits, now)
    _, key = issue_key(storage, user_id, now)
    return user, key


def move_credits(
    storage: Storage,
    user_id: str,
    amount: int,
    reason: str,
    now: datetime,
    *,
    idempotency_key: str | None = None,
) -> LedgerEntry:
    """A grant (amount > 0) or a negative adjustment, which never takes the balance below 0."""
    check_user_id(user_id)
    if amount == 0:
        raise InvalidInput("amount must not be 0")
    if not reason.strip():
        raise InvalidInput("reason must not be empty")
    problem = text_problem("reason", reason)
    if problem:
        raise InvalidInput(problem)
    check_idempotency_key(idempotency_key)
    entry_type = EntryType.GRANT if amount > 0 else EntryType.ADJUSTMENT
    return storage.move_credits(user_id, entry_type, amount, reason.strip(), now, idempotency_key)


def user_totals(storage: Storage, user_id: str) -> tuple[User, dict[EntryType, int]]:
    user = get_user(storage, user_id)
    return user, storage.ledger_totals(user_id)


def ledger_page(
    storage: Storage, user_id: str, *, limit: int, cursor: str | None, where: LedgerFilter
) -> Page[LedgerEntry]:
    check_cursor(cursor)
    get_user(storage, user_id)
    return storage.ledger(user_id, limit, cursor, where)


# -- catalog --------------------------------------------------------------------------------
CATALOG_KINDS = ("styles", "colors", "sizes")


def set_option(storage: Storage, kind: str, name: str, *, enabled: bool, cost: int | None) -> Catalog:
    if kind not in CATALOG_KINDS:
        raise InvalidInput(f"Unknown catalog kind '{kind}'. Valid values: {', '.join(CATALOG_KINDS)}")
    if not valid_id(name.replace(" ", "_")) or name != name.strip():
        raise InvalidInput(f"Invalid name '{name[:80]}': 1-128 letters, digits, spaces and _ . @ : + -")
    if kind != "sizes" and cost is not None:
        raise InvalidInput("Only sizes have a cost")
    if kind == "sizes" and not _is_size(name):
        raise InvalidInput(f"Invalid size '{name}': WIDTHxHEIGHT, each from 1 to 4096")
    if cost is not None and cost <= 0:
        raise InvalidInput("cost must be a positive number of credits")
    storage.put_option(kind, name, enabled=enabled, cost=cost)
    return storage.catalog()


def _is_size(name: str) -> bool:
    width, sep, height = name.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        return False
    return all(1 <= int(side) <= 4096 for side in (width, height))


def set_model(
    storage: Storage,
    name: str,
    *,
    failure_rate: float | None = None,
    latency_ms: int | None = None,
    enabled: bool | None = None,
) -> ModelSettings:
    if not valid_id(name):
        raise InvalidInput(f"Invalid model name '{name[:80]}': {ID_RULE}")
    current = storage.catalog().models.get(name) or ModelSettings(name)
    updated = replace(
        current,
        failure_rate=current.failure_rate if failure_rate is None else failure_rate,
        latency_ms=current.latency_ms if latency_ms is None else latency_ms,
        enabled=current.enabled if enabled is None else enabled,
    )
    storage.put_model(updated)
    return updated


# -- API keys -------------------------------------------------------------------------------
def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is as safe as a slow one and costs nothing per call.
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def issue_key(storage: Storage, user_id: str | None, now: datetime) -> tuple[str, str]:
    """A new key for a user (or an admin key for None): (key id, the key, shown only now)."""
    key = new_key()
    stored = storage.add_api_key(new_id(), hash_key(key), user_id, now)
    return stored.id, key


def authenticate(storage: Storage, key: str | None) -> ApiKey:
    if not key:
        raise Unauthenticated("Missing API key: send 'Authorization: Bearer <key>'")
    found = storage.find_api_key(hash_key(key))
    if found is None:
        raise Unauthenticated("Unknown or revoked API key")
    return found


@dataclass(frozen=True)
class FirstStart:
    admin_key: str
    user_keys: dict[str, str]


def first_start(storage: Storage, now: datetime, data: InitialData = INITIAL_DATA) -> FirstStart | None:
    """Loads the initial data set and creates its keys, once per database; None if already done."""
    catalog = Catalog(
        models={m.name: m for m in data.models},
        styles=frozenset(data.styles),
        colors=frozenset(data.colors),
        sizes=dict(data.sizes),
    )
    admin_key = new_key()
    user_keys = {user_id: new_key() for user_id in data.users}
    keys: list[tuple[str, str, str | None]] = [(new_id(), hash_key(admin_key), None)]
    keys += [(new_id(), hash_key(key), user_id) for user_id, key in user_keys.items()]
    if not storage.load_initial_data(catalog, dict(data.users), keys, now):
        return None
    return FirstStart(admin_key, user_keys)


# -- reports --------------------------------------------------------------------------------
def run_report(
    storage: Storage,
    period: reports.Period,
    now: datetime,
    *,
    thresholds: reports.Thresholds | None = None,
    baseline_weeks: int = BASELINE_WEEKS,
) -> dict[str, Any]:
    """Aggregates the period in the database, compares it with the preceding weeks, stores it.

    The aggregations are independent scans: they run side by side (the database works on them in
    parallel, and SQLite's driver lets go of the GIL while it scans). The numbers depend on the
    requests alone (invariant 6); the operators' marks are read from the previous week's report
    and from this one's earlier run, so that a re-run keeps them and the next week honours them.
    """
    before = reports.weeks_before(period, baseline_weeks)
    with ThreadPoolExecutor(REPORT_SCANS, thread_name_prefix="imagegen-report") as pool:
        groups = pool.submit(storage.group_counts, period.start, period.end)
        users = pool.submit(storage.unique_users, period.start, period.end)
        histograms = pool.submit(
            storage.generation_time_histogram, period.start, period.end, reports.TIME_BUCKET_MS
        )
        weeks = [pool.submit(_metrics, storage, week) for week in before]
        marked = [pool.submit(storage.get_report, p.id) for p in (*before[-1:], period)]
        metrics = reports.summarize(groups.result(), users.result())
        baseline = [week.result() for week in weeks]
        times = reports.generation_times(histograms.result())
        marks = [m for found in marked if (document := found.result()) for m in reports.marks_in(document)]
    detection = reports.detect(
        metrics,
        baseline,
        thresholds or reports.Thresholds(),
        marks_made=marks,
        week_ids=[week.id for week in (*before, period)],
    )
    document = reports.report_document(period, metrics, detection, now, times)
    storage.save_report(period.id, document, now)
    return document


def report_history(
    storage: Storage, period: reports.Period, weeks: int = BASELINE_WEEKS
) -> list[dict[str, Any]]:
    """The stored reports of the weeks before `period`, oldest first (for charts)."""
    found = (storage.get_report(week.id) for week in reports.weeks_before(period, weeks))
    return [document for document in found if document is not None]


def parse_period(
    week: str | None = None, start: datetime | None = None, end: datetime | None = None, *, now: datetime
) -> reports.Period:
    """A named ISO week, an explicit [start, end) range, or the 7 days ending now."""
    period = _period(week, start, end, now=now)
    if not (REPORT_YEARS[0] <= period.start.year and period.end.year <= REPORT_YEARS[1]):
        raise InvalidInput(f"Reports cover {REPORT_YEARS[0]} to {REPORT_YEARS[1]}")
    return period


REPORT_SCANS = 3  # the period's three aggregations at once; the baseline weeks queue behind them
REPORT_YEARS = (1971, 9998)  # room for the 12-week baseline before, and the period's end after


def _period(
    week: str | None, start: datetime | None, end: datetime | None, *, now: datetime
) -> reports.Period:
    try:
        if week:
            return reports.iso_week(week)
        if start is not None or end is not None:
            if start is None or end is None:
                raise ValueError("a range needs both start and end")
            if start.tzinfo is None or end.tzinfo is None:
                raise ValueError("start and end need a time zone, e.g. 2026-11-16T00:00:00Z")
            if not start < end <= now + reports.WEEK * 520:
                raise ValueError("start must be before end")
            return reports.between(start, end)
        return reports.last_7_days(now)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def _metrics(storage: Storage, period: reports.Period) -> reports.Metrics:
    groups = storage.group_counts(period.start, period.end)
    return reports.summarize(groups, storage.unique_users(period.start, period.end))


def list_reports(storage: Storage, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
    check_cursor(cursor)
    return storage.list_reports(limit, cursor)


def get_report(storage: Storage, report_id: str) -> dict[str, Any]:
    if not valid_id(report_id):
        raise InvalidInput(f"Invalid report id '{report_id[:80]}': {ID_RULE}")
    document = storage.get_report(report_id)
    if document is None:
        raise NotFound(f"Report '{report_id}' not found", id=report_id)
    return document


def mark_expected(
    storage: Storage,
    report_id: str,
    finding: reports.FindingId,
    note: str,
    now: datetime,
    *,
    expected: bool = True,
) -> dict[str, Any]:
    """Marks a report's finding as expected (or takes the mark off) and stores the report; the
    same pattern is then withheld from the next week's report while it does not grow."""
    document = get_report(storage, report_id)
    try:
        changed = reports.set_mark(document, finding, reports.isoformat_z(now), note, expected=expected)
    except LookupError as exc:
        raise NotFound(str(exc), id=report_id) from exc
    storage.save_report(report_id, document, reports.generated_at(document))
    return changed


# -- audit ----------------------------------------------------------------------------------
def verify(storage: Storage) -> Iterator[Violation]:
    return storage.violations()


def is_terminal(request: GenerationRequest) -> bool:
    return request.status in (Status.COMPLETED, Status.FAILED, Status.CANCELED)
