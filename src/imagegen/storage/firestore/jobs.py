"""The job lifecycle on Firestore: claim a pending request with a lease, keep the lease alive, end
the job (completed, or failed and refunded), hand a dead worker's job back.

Status changes that move no credits (claim, complete, requeue, heartbeat) are writes conditional on
the document's update time, so a concurrent change makes them fail, not win.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from imagegen.domain.generation import GenerationRequest, Move, Status
from imagegen.domain.queues import QUEUED, ModelQueue, QueueCount, model_queues
from imagegen.ports import Lease
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.conditional import Reads, Writes, commit_unchanged
from imagegen.storage.firestore.errors import translated
from imagegen.storage.firestore.parts import Known, cond
from imagegen.storage.firestore.refunds import FirestoreRefunds

CLAIM_CANDIDATES = 10  # a claim tries the oldest pending job first, then others at random
CLAIM_ROUNDS = 50


class FirestoreJobs(FirestoreRefunds):
    @translated
    def claim_job(
        self, lease: Lease, now: datetime, models: Collection[str] | None = None
    ) -> GenerationRequest | None:
        """Claims the oldest pending job, or another of the oldest few when a competitor took it.

        `models` (at most 30: Firestore's limit for `in`) narrows the queue to those models' jobs.

        Every claimer reading the queue's head inside a transaction would make one lock convoy; instead
        each candidate is claimed by a write conditional on its update time, so of two claimers of
        the same job exactly one wins and the other moves on at once to another candidate.
        """
        pending = self._requests().where(filter=cond("status", "==", Status.PENDING.value))
        if models is not None:
            if not models:
                return None
            pending = pending.where(filter=cond("model", "in", sorted(models)))
        pending = pending.order_by("createdAt").order_by("__name__")
        for _ in range(CLAIM_ROUNDS):
            candidates = list(pending.limit(CLAIM_CANDIDATES).stream())
            if not candidates:
                return None
            head, rest = candidates[0], candidates[1:]
            random.shuffle(rest)
            for snap in (head, *rest):
                claimed = self._try_claim(snap, lease.worker_id, now, lease.until)
                if claimed is not None:
                    return claimed
        return None

    def _try_claim(
        self, snap: Any, worker_id: str, now: datetime, lease_until: datetime
    ) -> GenerationRequest | None:
        data = snap.to_dict() or {}
        if not Move.CLAIM.allows(Status(data["status"])):
            return None
        changes = {
            "status": Move.CLAIM.target.value,
            "leaseOwner": worker_id,
            "leaseExpiresAt": d.aware(lease_until),
            "attempts": int(data.get("attempts") or 0) + 1,
            "startedAt": data.get("startedAt") or d.aware(now),
        }
        request = d.request_from(snap.id, {**data, **changes})
        batch = self.db.batch()
        batch.update(snap.reference, changes, option=self.db.write_option(last_update_time=snap.update_time))
        self._enqueue_webhook(batch, request, "start", now)
        try:
            results = batch.commit()
        except (gexc.FailedPrecondition, gexc.NotFound):
            return None  # changed since we read it: another worker claimed it, or it was canceled
        self._remember(snap.id, results[0].update_time, {**data, **changes})
        return request

    def _conditional_update(
        self, ref: firestore.DocumentReference, decide: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> GenerationRequest | None:
        """Applies decide(data)'s changes if the document has not changed since it was read.

        Returns the updated request, or None when the document is missing or decide refused.
        """
        while True:
            snap = ref.get()
            if not snap.exists:
                return None
            data = snap.to_dict() or {}
            changes = decide(data)
            if changes is None:
                return None
            try:
                ref.update(changes, option=self.db.write_option(last_update_time=snap.update_time))
            except gexc.FailedPrecondition:
                continue  # changed in between: decide again on what it is now
            return d.request_from(snap.id, {**data, **changes})

    @translated
    def extend_leases(self, leases: dict[str, str], lease_until: datetime) -> int:
        def extend(worker_id: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
            def decide(data: dict[str, Any]) -> dict[str, Any] | None:
                holds = data.get("status") == Status.RUNNING.value and data.get("leaseOwner") == worker_id
                return {"leaseExpiresAt": d.aware(lease_until)} if holds else None

            return decide

        extended = 0
        for request_id, worker_id in leases.items():
            ref = self._requests().document(request_id)
            extended += self._conditional_update(ref, extend(worker_id)) is not None
        return extended

    @translated
    def complete(self, request_id: str, worker_id: str, image_url: str, now: datetime) -> bool:
        """Completed, if still running under `worker_id`; the user has one request fewer in flight.

        The job's own process usually knows the document as it wrote it (the claim): then the write
        is conditional on that version, one round trip; otherwise, or if it changed, it reads first.
        """
        ref = self._requests().document(request_id)
        changes = {
            "status": Move.COMPLETE.target.value,
            "imageUrl": image_url,
            "completedAt": d.aware(now),
            "leaseOwner": None,
            "leaseExpiresAt": None,
        }

        def write(writes: Writes, snap: Any, data: dict[str, Any]) -> bool:
            if not _running_for(data, worker_id):
                return False
            writes.update(snap, changes)
            writes.increment(self._users().document(data["userId"]), "inFlight", -1)
            self._enqueue_webhook(writes, d.request_from(request_id, {**data, **changes}), "completed", now)
            return True

        known = self._recall(request_id)
        if known is not None:
            writes = Writes(self.db)
            if write(writes, Known(ref, known[0]), known[1]):
                try:
                    writes.commit()
                    return True
                except (gexc.FailedPrecondition, gexc.Aborted):
                    pass  # changed since this process wrote it: decide again on what it is now

        def decide(reads: Reads, writes: Writes) -> bool:
            snap = reads[ref]
            return snap.exists and write(writes, snap, snap.to_dict() or {})

        done, _ = commit_unchanged(self.db, [ref], decide)
        return done

    @translated
    def fail_and_refund(
        self,
        request_id: str,
        error: str,
        now: datetime,
        *,
        worker_id: str | None = None,
        lease_expired: bool = False,
    ) -> bool:
        def failing(data: dict[str, Any]) -> bool:
            if not Move.FAIL.allows(Status(data["status"])):
                return False
            if worker_id is not None and data.get("leaseOwner") != worker_id:
                return False
            expires = d.utc(data.get("leaseExpiresAt"))
            return not lease_expired or (expires is not None and expires < now)

        return self._finish_with_refund(request_id, failing, Move.FAIL, error, now)

    @translated
    def expired_jobs(self, now: datetime) -> list[GenerationRequest]:
        query = (
            self._requests()
            .where(filter=cond("status", "==", Status.RUNNING.value))
            .where(filter=cond("leaseExpiresAt", "<", d.aware(now)))
            .order_by("leaseExpiresAt")
            .limit(100)
        )
        return [d.request_from(snap.id, snap.to_dict() or {}) for snap in query.stream()]

    @translated
    def requeue(self, request_id: str, now: datetime) -> bool:
        def decide(data: dict[str, Any]) -> dict[str, Any] | None:
            expires = d.utc(data.get("leaseExpiresAt"))
            if not Move.REQUEUE.allows(Status(data["status"])) or expires is None or expires >= now:
                return None
            return {"status": Move.REQUEUE.target.value, "leaseOwner": None, "leaseExpiresAt": None}

        return self._conditional_update(self._requests().document(request_id), decide) is not None

    @translated
    def queues(self, now: datetime) -> list[ModelQueue]:
        """Reads the model and creation time of every queued job (the queue, not the history)."""
        counts: dict[tuple[str, Status], QueueCount] = {}
        for status in QUEUED:
            query = self._requests().where(filter=cond("status", "==", status.value))
            for snap in query.select(["model", "createdAt"]).stream():
                data = snap.to_dict() or {}
                model, created = str(data.get("model")), d.utc(data.get("createdAt"))
                seen = counts.get((model, status))
                oldest = created if seen is None or seen.oldest is None else min(seen.oldest, created or now)
                counts[(model, status)] = QueueCount(model, status, (seen.count if seen else 0) + 1, oldest)
        return model_queues(counts.values(), now)


def _running_for(data: dict[str, Any], worker_id: str) -> bool:
    return Move.COMPLETE.allows(Status(data["status"])) and data.get("leaseOwner") == worker_id
