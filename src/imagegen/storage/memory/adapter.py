"""An in-memory storage adapter: the whole contract of `imagegen.ports.Storage`, in one process.

For tests of the service layer without a database: nothing survives the process. Every method runs
directly on the caller's event loop (nothing in it waits) and holds one lock for its whole run, so
each is atomic and isolated as a transaction is on the other adapters, even when several threads'
event loops share one storage (a test client's server thread beside the test's own loop).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from imagegen.domain.audit import Violation
from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.errors import (
    IdempotencyConflict,
    InvalidInput,
    StaleConfig,
    UserExists,
    UserNotFound,
)
from imagegen.domain.generation import GenerationRequest, Move, NewGeneration, Status
from imagegen.domain.idempotency import Idempotency, StoredResponse
from imagegen.domain.ids import new_id
from imagegen.domain.keys import ApiKey
from imagegen.domain.ledger import (
    NO_FILTER,
    EntryType,
    LedgerEntry,
    LedgerFilter,
    debit_refusal,
    debit_refused,
    same_move,
)
from imagegen.domain.paging import Page, after_seq, after_time, seq_cursor, time_cursor
from imagegen.domain.reports import GroupCount
from imagegen.domain.users import User
from imagegen.domain.webhooks import WebhookDelivery, delivery_of
from imagegen.ports import Lease
from imagegen.storage.memory.audit import violations
from imagegen.storage.memory.state import (
    OPTION_KINDS,
    DeliveryRow,
    IdempotencyRow,
    KeyRow,
    OptionRow,
    ReportRow,
    RequestRow,
    RunRow,
    State,
    UserRow,
)
from imagegen.storage.memory.transfer import Import, export_records

INITIAL_DATA_MARKER = "initial_data_loaded"


class MemoryStorage:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state = State()
        # The configuration version: bumped by every catalog or model edit and key revocation, so
        # that a create priced from a cached catalog is refused (StaleConfig) as on the other adapters.
        self._config_version = 1

    # -- lifecycle --------------------------------------------------------------------------
    async def migrate(self) -> None:
        """Nothing to create: the state is born with its collections."""

    async def load_initial_data(
        self,
        catalog: Catalog,
        users: dict[str, int],
        keys: list[tuple[str, str, str | None]],
        now: datetime,
    ) -> bool:
        with self._lock:
            s = self._state
            if INITIAL_DATA_MARKER in s.meta:
                return False
            s.models.update(catalog.models)
            for kind, names in (("styles", catalog.styles), ("colors", catalog.colors)):
                s.options[kind].update({name: OptionRow(True) for name in names})
            s.options["sizes"].update({name: OptionRow(True, cost) for name, cost in catalog.sizes.items()})
            for user_id, credits in users.items():
                self._insert_user(user_id, credits, now, "initial data", entry_id=f"initial-{user_id}")
            for key_id, key_hash, key_user in keys:
                s.keys[key_id] = KeyRow(ApiKey(key_id, key_user, now), key_hash)
            s.meta[INITIAL_DATA_MARKER] = now.isoformat()
            return True

    async def ping(self) -> None:
        """Always there."""

    async def listen(self, on_job: Callable[[], None], on_done: Callable[[str], None]) -> None:
        """No other process shares this storage: there is nothing to hear (returns at once)."""

    async def close(self) -> None:
        """Nothing to release."""

    # -- catalog ----------------------------------------------------------------------------
    async def catalog(self) -> Catalog:
        with self._lock:
            return self._catalog()

    async def config_version(self) -> str:
        with self._lock:
            return str(self._config_version)

    async def config_snapshot(self) -> tuple[str, Catalog]:
        with self._lock:
            return str(self._config_version), self._catalog()

    async def model_settings(self, name: str) -> ModelSettings | None:
        with self._lock:
            return self._state.models.get(name)

    async def put_model(self, model: ModelSettings) -> None:
        with self._lock:
            self._state.models[model.name] = model
            self._config_version += 1

    async def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None:
        with self._lock:
            options = self._state.options[kind]
            current = options.get(name)
            if current is None and kind == "sizes" and cost is None:
                raise InvalidInput(f"A new size needs a cost: '{name}' is not in the catalog yet")
            keep = current.cost if current is not None else None
            options[name] = OptionRow(enabled, cost if cost is not None else keep)
            self._config_version += 1

    # -- users and credits ------------------------------------------------------------------
    async def create_user(self, user_id: str, credits: int, now: datetime) -> User:
        with self._lock:
            if user_id in self._state.users:
                raise UserExists(user_id)
            self._insert_user(user_id, credits, now, "opening balance")
            return User(user_id, credits, now)

    async def get_user(self, user_id: str) -> User | None:
        with self._lock:
            user = self._state.users.get(user_id)
            return None if user is None else User(user.id, user.credits, user.created_at)

    async def move_credits(
        self,
        user_id: str,
        entry_type: EntryType,
        delta: int,
        reason: str | None,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        with self._lock:
            if idempotency_key is not None:
                for stored in self._state.ledger.get(user_id, []):
                    if stored.idempotency_key == idempotency_key:
                        return same_move(stored.entry, entry_type, delta)
            user = self._user(user_id)
            refusal = debit_refusal(user.credits, user.in_flight, -delta, None)  # the domain's rule
            if refusal is not None:
                raise debit_refused(
                    refusal, user_id, cost=-delta, in_flight=user.in_flight, max_in_flight=None
                )
            user.credits += delta
            return self._append(user, entry_type, delta, None, reason, now, idempotency_key=idempotency_key)

    async def ledger(
        self, user_id: str, limit: int, cursor: str | None, where: LedgerFilter = NO_FILTER
    ) -> Page[LedgerEntry]:
        before = after_seq(cursor) if cursor is not None else None
        with self._lock:
            newest_first = reversed(self._state.ledger.get(user_id, []))
            found = [
                stored
                for stored in newest_first
                if (before is None or stored.seq < before) and _matches(stored.entry, where)
            ]
        page = found[:limit]
        next_cursor = seq_cursor(page[-1].seq) if len(found) > limit else None
        return Page([stored.entry for stored in page], next_cursor)

    async def ledger_totals(self, user_id: str) -> dict[EntryType, int]:
        totals: dict[EntryType, int] = {}
        with self._lock:
            for stored in self._state.ledger.get(user_id, []):
                totals[stored.entry.type] = totals.get(stored.entry.type, 0) + stored.entry.delta
        return totals

    # -- generation requests and jobs -------------------------------------------------------
    async def debit_and_enqueue(
        self, new: NewGeneration, config_version: str | None = None, claim: Lease | None = None
    ) -> tuple[GenerationRequest, bool]:
        spec = new.spec
        with self._lock:
            if config_version is not None and config_version != str(self._config_version):
                raise StaleConfig
            if new.idempotency_key is not None:
                existing = self._by_idempotency_key(spec.user_id, new.idempotency_key)
                if existing is not None:
                    if existing.fingerprint != new.fingerprint:
                        raise IdempotencyConflict(
                            "Idempotency-Key was already used with a different request body",
                            idempotencyKey=new.idempotency_key,
                        )
                    return existing.request, False
            user = self._user(spec.user_id)
            refusal = debit_refusal(user.credits, user.in_flight, new.cost, new.max_in_flight)
            if refusal is not None:
                raise debit_refused(
                    refusal, user.id, cost=new.cost, in_flight=user.in_flight, max_in_flight=new.max_in_flight
                )
            request, owner, until = new.queued(), None, None
            if claim is not None:  # its creator runs it: started at once, under the lease
                request = replace(request, status=Move.CLAIM.target, attempts=1, started_at=new.created_at)
                owner, until = claim.worker_id, claim.until
                self._enqueue_webhook(request, "start", new.created_at)
            self._state.requests[new.id] = RequestRow(request, new.fingerprint, owner, until)
            user.credits -= new.cost
            user.in_flight += 1
            self._append(user, EntryType.DEDUCTION, -new.cost, new.id, None, new.created_at)
            return request, True

    async def get_request(self, request_id: str) -> GenerationRequest | None:
        with self._lock:
            stored = self._state.requests.get(request_id)
            return None if stored is None else stored.request

    async def list_requests(
        self, user_id: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> Page[GenerationRequest]:
        after = after_time(cursor) if cursor is not None else None
        with self._lock:
            chosen = [
                stored.request
                for stored in self._state.requests.values()
                if (user_id is None or stored.request.user_id == user_id)
                and (status is None or stored.request.status is status)
            ]
        chosen.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        if after is not None:
            chosen = [r for r in chosen if (r.created_at, r.id) < after]
        page = chosen[:limit]
        next_cursor = time_cursor(page[-1].created_at, page[-1].id) if len(chosen) > limit else None
        return Page(page, next_cursor)

    async def claim_job(self, lease: Lease, now: datetime) -> GenerationRequest | None:
        with self._lock:
            pending = [s for s in self._state.requests.values() if Move.CLAIM.allows(s.request.status)]
            if not pending:
                return None
            stored = min(pending, key=lambda s: (s.request.created_at, s.request.id))
            request = stored.request
            stored.request = replace(
                request,
                status=Move.CLAIM.target,
                attempts=request.attempts + 1,
                started_at=request.started_at or now,
            )
            stored.lease_owner, stored.lease_expires_at = lease.worker_id, lease.until
            self._enqueue_webhook(stored.request, "start", now)
            return stored.request

    async def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int:
        extended = 0
        with self._lock:
            for request_id, worker_id in leases.items():
                stored = self._state.requests.get(request_id)
                if stored and stored.request.status is Status.RUNNING and stored.lease_owner == worker_id:
                    stored.lease_expires_at = lease_until
                    extended += 1
        return extended

    async def complete(self, request_id: str, worker_id: str, image_url: str, now: datetime) -> bool:
        with self._lock:
            stored = self._state.requests.get(request_id)
            if (
                stored is None
                or not Move.COMPLETE.allows(stored.request.status)
                or stored.lease_owner != worker_id
            ):
                return False
            self._finish(stored, Move.COMPLETE, now, image_url=image_url)
            self._state.users[stored.request.user_id].in_flight -= 1
            self._enqueue_webhook(stored.request, "completed", now)
            return True

    async def fail_and_refund(
        self,
        request_id: str,
        error: str,
        now: datetime,
        *,
        worker_id: str | None = None,
        lease_expired: bool = False,
    ) -> bool:
        with self._lock:
            stored = self._state.requests.get(request_id)
            if stored is None or not Move.FAIL.allows(stored.request.status):
                return False
            if worker_id is not None and stored.lease_owner != worker_id:
                return False
            if lease_expired and not (stored.lease_expires_at is not None and stored.lease_expires_at < now):
                return False
            self._refund(stored, Move.FAIL, error, now)
            return True

    async def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        with self._lock:
            stored = self._state.requests.get(request_id)
            if stored is None or not Move.CANCEL.allows(stored.request.status):
                return False
            self._refund(stored, Move.CANCEL, "canceled", now)
            return True

    async def expired_jobs(self, now: datetime) -> list[GenerationRequest]:
        with self._lock:
            expired = [
                s
                for s in self._state.requests.values()
                if s.request.status is Status.RUNNING
                and s.lease_expires_at is not None
                and s.lease_expires_at < now
            ]
            expired.sort(key=lambda s: s.lease_expires_at or now)
            return [s.request for s in expired[:100]]

    async def requeue(self, request_id: str, now: datetime) -> bool:
        with self._lock:
            stored = self._state.requests.get(request_id)
            if stored is None or not Move.REQUEUE.allows(stored.request.status):
                return False
            if stored.lease_expires_at is None or stored.lease_expires_at >= now:
                return False
            stored.request = replace(stored.request, status=Move.REQUEUE.target)
            stored.lease_owner = stored.lease_expires_at = None
            return True

    # -- api keys ---------------------------------------------------------------------------
    async def add_api_key(self, key_id: str, key_hash: str, user_id: str | None, now: datetime) -> ApiKey:
        key = ApiKey(key_id, user_id, now)
        with self._lock:
            self._state.keys[key_id] = KeyRow(key, key_hash)
        return key

    async def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        with self._lock:
            stored = self._state.keys.get(key_id)
            if stored is None or stored.key.revoked_at is not None:
                return False
            stored.key = replace(stored.key, revoked_at=now)
            self._config_version += 1
            return True

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        with self._lock:
            for stored in self._state.keys.values():
                if stored.key_hash == key_hash and stored.key.revoked_at is None:
                    return stored.key
        return None

    # -- idempotency keys -------------------------------------------------------------------
    async def begin_idempotent(
        self, scope: str, key: str, fingerprint: str, now: datetime, lock_until: datetime
    ) -> Idempotency:
        with self._lock:
            stored = self._state.idempotency.get((scope, key))
            if stored is None:
                self._state.idempotency[(scope, key)] = IdempotencyRow(fingerprint, now, lock_until)
                return Idempotency("new")
            if stored.fingerprint != fingerprint:
                raise IdempotencyConflict(
                    "Idempotency-Key was already used with a different request", idempotencyKey=key
                )
            if stored.response is not None:
                return Idempotency("replay", stored.response)
            if stored.locked_until is not None and stored.locked_until > now:
                return Idempotency("busy")
            stored.locked_until = lock_until  # the first attempt died mid-request: take over
            return Idempotency("new")

    async def finish_idempotent(self, scope: str, key: str, response: StoredResponse) -> None:
        with self._lock:
            stored = self._state.idempotency.get((scope, key))
            if stored is not None:
                stored.response, stored.locked_until = response, None

    async def release_idempotent(self, scope: str, key: str) -> None:
        with self._lock:
            stored = self._state.idempotency.get((scope, key))
            if stored is not None and stored.response is None:
                del self._state.idempotency[(scope, key)]

    async def purge_idempotency(self, created_before: datetime) -> int:
        with self._lock:
            old = [k for k, stored in self._state.idempotency.items() if stored.created_at < created_before]
            for k in old:
                del self._state.idempotency[k]
            return len(old)

    # -- webhooks ---------------------------------------------------------------------------
    async def claim_webhooks(self, now: datetime, lease_until: datetime, limit: int) -> list[WebhookDelivery]:
        with self._lock:
            due = [
                d
                for d in self._state.deliveries.values()
                if d.state == "pending"
                and d.next_attempt_at <= now
                and (d.lease_expires_at is None or d.lease_expires_at < now)
            ]
            due.sort(key=lambda d: d.next_attempt_at)
            claimed = []
            for stored in due[:limit]:
                stored.lease_expires_at = lease_until
                stored.delivery = replace(stored.delivery, attempts=stored.delivery.attempts + 1)
                claimed.append(stored.delivery)
            return claimed

    async def webhook_delivered(self, delivery_id: str, now: datetime) -> None:
        with self._lock:
            stored = self._state.deliveries.get(delivery_id)
            if stored is not None:
                stored.state, stored.lease_expires_at, stored.last_error = "delivered", None, None

    async def webhook_failed(self, delivery_id: str, error: str, retry_at: datetime | None) -> None:
        with self._lock:
            stored = self._state.deliveries.get(delivery_id)
            if stored is None:
                return
            stored.last_error, stored.lease_expires_at = error[:1000], None
            if retry_at is None:
                stored.state = "abandoned"
            else:
                stored.next_attempt_at = retry_at

    async def get_meta(self, key: str) -> str | None:
        with self._lock:
            return self._state.meta.get(key)

    async def put_meta_once(self, key: str, value: str) -> str:
        with self._lock:
            return self._state.meta.setdefault(key, value)

    # -- reports ----------------------------------------------------------------------------
    async def group_counts(self, start: datetime, end: datetime) -> list[GroupCount]:
        groups: dict[tuple[str, str, str, str, str], list[int]] = {}
        for request in self._requests_between(start, end):
            dims = (request.model, request.style, request.color, request.size, request.status.value)
            counted = groups.setdefault(dims, [0, 0])
            counted[0] += 1
            counted[1] += request.cost
        return [GroupCount(*dims, count, cost) for dims, (count, cost) in groups.items()]

    async def unique_users(self, start: datetime, end: datetime) -> int:
        return len({request.user_id for request in self._requests_between(start, end)})

    async def save_report(self, report_id: str, document: dict[str, Any], now: datetime) -> None:
        start = datetime.fromisoformat(document["periodStart"])
        end = datetime.fromisoformat(document["periodEnd"])
        with self._lock:
            self._state.reports[report_id] = ReportRow(copy.deepcopy(document), start, end)

    async def get_report(self, report_id: str) -> dict[str, Any] | None:
        with self._lock:
            stored = self._state.reports.get(report_id)
            return None if stored is None else copy.deepcopy(stored.document)

    async def list_reports(self, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
        after = after_time(cursor) if cursor is not None else None
        with self._lock:
            ordered = sorted(
                (
                    (stored.period_start, report_id, stored)
                    for report_id, stored in self._state.reports.items()
                ),
                key=lambda item: (item[0], item[1]),
                reverse=True,
            )
        if after is not None:
            ordered = [item for item in ordered if (item[0], item[1]) < after]
        page = ordered[:limit]
        next_cursor = time_cursor(page[-1][0], page[-1][1]) if len(ordered) > limit else None
        return Page([copy.deepcopy(stored.document) for _, _, stored in page], next_cursor)

    async def generation_time_histogram(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        counts: dict[str, dict[int, int]] = {}
        for request in self._requests_between(start, end):
            if request.status is not Status.COMPLETED or request.started_at is None:
                continue
            if request.completed_at is None:
                continue
            millis = (request.completed_at - request.started_at).total_seconds() * 1000
            bucket = max(int(millis // bucket_ms), 0)
            by_bucket = counts.setdefault(request.model, {})
            by_bucket[bucket] = by_bucket.get(bucket, 0) + 1
        return {model: sorted(buckets.items()) for model, buckets in counts.items()}

    async def earliest_request_at(self) -> datetime | None:
        with self._lock:
            return min((s.request.created_at for s in self._state.requests.values()), default=None)

    # -- the scheduler ----------------------------------------------------------------------
    async def claim_scheduled_run(
        self, period_id: str, owner: str, now: datetime, stale_before: datetime
    ) -> bool:
        with self._lock:
            run = self._state.runs.get(period_id)
            if run is not None and (run.finished_at is not None or run.claimed_at >= stale_before):
                return False
            self._state.runs[period_id] = RunRow(owner, now)  # new, or taken over from a dead claimer
            return True

    async def finish_scheduled_run(self, period_id: str, now: datetime) -> None:
        with self._lock:
            run = self._state.runs.get(period_id)
            if run is not None:
                run.finished_at = now

    async def last_scheduled_run(self) -> str | None:
        with self._lock:
            finished = [period for period, run in self._state.runs.items() if run.finished_at is not None]
            return max(finished, default=None)

    # -- audit, import and export -----------------------------------------------------------
    async def violations(self) -> list[Violation]:
        with self._lock:
            return list(violations(self._state))

    async def export_records(self) -> AsyncIterator[dict[str, Any]]:
        with self._lock:
            records = list(export_records(self._state))
        for record in records:
            yield record

    async def import_records(self, records: Iterable[dict[str, Any]], now: datetime) -> dict[str, int]:
        with self._lock:
            draft = copy.deepcopy(self._state)
            counts = Import(draft, now).run(records)
            self._state = draft  # every line went in: keep it all
            return counts

    # -- helpers (each runs under the caller's lock) ----------------------------------------
    def _catalog(self) -> Catalog:
        s = self._state
        enabled = {kind: {n: o for n, o in s.options[kind].items() if o.enabled} for kind in OPTION_KINDS}
        return Catalog(
            dict(s.models),
            frozenset(enabled["styles"]),
            frozenset(enabled["colors"]),
            {name: int(option.cost or 0) for name, option in enabled["sizes"].items()},
        )

    def _user(self, user_id: str) -> UserRow:
        user = self._state.users.get(user_id)
        if user is None:
            raise UserNotFound(user_id)
        return user

    def _insert_user(
        self, user_id: str, credits: int, now: datetime, reason: str, *, entry_id: str | None = None
    ) -> UserRow:
        user = UserRow(user_id, credits, now)
        self._state.users[user_id] = user
        self._state.ledger[user_id] = []
        if credits:
            self._append(user, EntryType.GRANT, credits, None, reason, now, entry_id=entry_id)
        return user

    def _append(
        self,
        user: UserRow,
        entry_type: EntryType,
        delta: int,
        request_id: str | None,
        reason: str | None,
        now: datetime,
        *,
        idempotency_key: str | None = None,
        entry_id: str | None = None,
    ) -> LedgerEntry:
        """Records a move whose effect is already on `user` (its balance after is the user's now)."""
        entry_id = entry_id or new_id()
        entry = LedgerEntry(entry_id, user.id, entry_type, delta, user.credits, request_id, reason, now)
        self._state.append(user, entry, idempotency_key)
        return entry

    def _finish(self, stored: RequestRow, move: Move, now: datetime, **changes: Any) -> None:
        stored.request = replace(stored.request, status=move.target, completed_at=now, **changes)
        stored.lease_owner = stored.lease_expires_at = None

    def _refund(self, stored: RequestRow, move: Move, error: str, now: datetime) -> None:
        self._finish(stored, move, now, error=error)
        request = stored.request
        user = self._state.users[request.user_id]
        user.credits += request.cost
        user.in_flight -= 1
        self._append(user, EntryType.REFUND, request.cost, request.id, error, now)
        self._enqueue_webhook(request, "completed", now)

    def _enqueue_webhook(self, request: GenerationRequest, event: str, now: datetime) -> None:
        delivery = delivery_of(request, event, now)
        if delivery is not None:
            self._state.deliveries[delivery.id] = DeliveryRow(delivery, next_attempt_at=now)

    def _by_idempotency_key(self, user_id: str, key: str) -> RequestRow | None:
        for stored in self._state.requests.values():
            if stored.request.user_id == user_id and stored.request.idempotency_key == key:
                return stored
        return None

    def _requests_between(self, start: datetime, end: datetime) -> list[GenerationRequest]:
        with self._lock:
            return [s.request for s in self._state.requests.values() if start <= s.request.created_at < end]


def _matches(entry: LedgerEntry, where: LedgerFilter) -> bool:
    if where.types and entry.type not in where.types:
        return False
    if where.since is not None and entry.timestamp < where.since:
        return False
    return where.until is None or entry.timestamp < where.until
