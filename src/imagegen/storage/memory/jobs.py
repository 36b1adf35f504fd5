"""Jobs in memory: claiming the oldest pending request under a lease, extending leases, and ending a
job (completed, or failed with its refund); expired leases are found and requeued.

Only the lease's owner ends its job, and only while the request's status allows the move, so a
worker that lost its lease cannot complete or refund a request twice.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import datetime

from imagegen.domain.generation import GenerationRequest, Move, Status
from imagegen.domain.queues import QUEUED, ModelQueue, QueueCount, model_queues
from imagegen.ports import Lease
from imagegen.storage.memory.refunds import MemoryRefunds


class MemoryJobs(MemoryRefunds):
    async def claim_job(
        self, lease: Lease, now: datetime, models: Collection[str] | None = None
    ) -> GenerationRequest | None:
        with self._lock:
            pending = [
                s
                for s in self._state.requests.values()
                if Move.CLAIM.allows(s.request.status) and (models is None or s.request.model in models)
            ]
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

    async def queues(self, now: datetime) -> list[ModelQueue]:
        counts: dict[tuple[str, Status], QueueCount] = {}
        with self._lock:
            for stored in self._state.requests.values():
                request = stored.request
                if request.status not in QUEUED:
                    continue
                key = (request.model, request.status)
                seen = counts.get(key)
                oldest = request.created_at if seen is None else min(seen.oldest or now, request.created_at)
                counts[key] = QueueCount(
                    request.model, request.status, (seen.count if seen else 0) + 1, oldest
                )
        return model_queues(counts.values(), now)
