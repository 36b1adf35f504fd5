"""Generation requests in memory: the create (its debit, its request and, when its creator runs it,
its claim, all under one lock), reading and listing requests, and canceling one with its refund.

A create with an Idempotency-Key returns the request that key made first, or is a conflict when
the body differs, as on the other adapters.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from imagegen.domain.errors import IdempotencyConflict, StaleConfig
from imagegen.domain.generation import GenerationRequest, Move, NewGeneration, Status
from imagegen.domain.ledger import EntryType, debit_refusal, debit_refused
from imagegen.domain.paging import Page, after_time, time_cursor
from imagegen.ports import Lease
from imagegen.storage.memory.refunds import MemoryRefunds
from imagegen.storage.memory.state import RequestRow


class MemoryGenerations(MemoryRefunds):
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

    async def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        with self._lock:
            stored = self._state.requests.get(request_id)
            if stored is None or not Move.CANCEL.allows(stored.request.status):
                return False
            self._refund(stored, Move.CANCEL, "canceled", now)
            return True

    def _by_idempotency_key(self, user_id: str, key: str) -> RequestRow | None:
        for stored in self._state.requests.values():
            if stored.request.user_id == user_id and stored.request.idempotency_key == key:
                return stored
        return None
