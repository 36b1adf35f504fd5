"""Creating generation requests on Firestore (the debit and the request in one conditional commit),
reading them, canceling them.

A request's deduction has the fixed id `{requestId}_deduction`, written with create(); a create with
an Idempotency-Key also creates its `generationKeys` document, so a second request for one key
cannot exist. The user document counts its requests in flight (`inFlight`): the debit checks and
raises it, the request's end lowers it, so the in-flight limit needs no query.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from imagegen.domain.errors import IdempotencyConflict, StaleConfig, TooManyRequests
from imagegen.domain.generation import GenerationRequest, Move, NewGeneration, Status, valid_id
from imagegen.domain.ledger import EntryType, debit_refusal, debit_refused
from imagegen.domain.paging import Page, after_time, time_cursor
from imagegen.ports import Lease
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.conditional import Reads, Writes, commit_unchanged
from imagegen.storage.firestore.credits import CreditMove, user_state
from imagegen.storage.firestore.errors import Contention, translated
from imagegen.storage.firestore.parts import CONFIG_VERSION, DESC, cond, version_of
from imagegen.storage.firestore.refunds import FirestoreRefunds


class FirestoreGenerations(FirestoreRefunds):
    @translated
    def debit_and_enqueue(
        self, new: NewGeneration, config_version: str | None = None, claim: Lease | None = None
    ) -> tuple[GenerationRequest, bool]:
        """With `claim`, the request is created already running under that lease: a Cloud Function
        keeps no worker after it answers, so the invocation that creates a request runs its job."""
        return self._debit(new, claim, config_version)

    def _debit(
        self, new: NewGeneration, claim: Lease | None, config_version: str | None
    ) -> tuple[GenerationRequest, bool]:
        """One read of the user, the configuration version (and the key's document), one commit."""
        spec = new.spec
        user_ref = self._users().document(spec.user_id)
        config_ref = self._meta(CONFIG_VERSION)
        request_ref = self._requests().document(new.id)
        key = new.idempotency_key
        key_ref = None if key is None else self._generation_key(spec.user_id, key)
        doc = new_request_doc(new) if claim is None else claimed_request_doc(new, claim)
        request = d.request_from(new.id, doc)

        def decide(reads: Reads, writes: Writes) -> tuple[GenerationRequest, bool]:
            if key_ref is not None and reads[key_ref].exists:
                return self._replay(reads[key_ref].to_dict() or {}, new), False
            if config_version is not None and version_of(reads[config_ref]) != config_version:
                raise StaleConfig
            user = user_state(reads[user_ref])
            refusal = debit_refusal(user.credits, user.in_flight, new.cost, new.max_in_flight)
            if refusal is not None:
                raise debit_refused(
                    refusal,
                    spec.user_id,
                    cost=new.cost,
                    in_flight=user.in_flight,
                    max_in_flight=new.max_in_flight,
                )
            entry_id = d.entry_id(new.id, EntryType.DEDUCTION)
            move = CreditMove(user, EntryType.DEDUCTION, -new.cost, new.id, None, new.created_at, entry_id)
            writes.create(request_ref, doc)
            writes.create(self._ledger(spec.user_id).document(entry_id), move.entry_doc)
            writes.update(reads[user_ref], move.user_changes(in_flight=+1))
            if key_ref is not None and key is not None:
                writes.create(key_ref, generation_key_doc(new.id, spec.user_id, key, new.fingerprint))
            if claim is not None:
                self._enqueue_webhook(writes, request, "start", new.created_at)
            return request, True

        refs = [user_ref, config_ref] if key_ref is None else [user_ref, config_ref, key_ref]
        try:
            with self._user_lock(spec.user_id):
                (found, fresh), writes = commit_unchanged(self.db, refs, decide)
        except Contention as exc:
            # The user's balance kept changing under this debit: more creates at once than one
            # document takes. Nothing was written; the client may send it again.
            raise TooManyRequests(
                f"User {spec.user_id} has too many creates at once; try again",
                retry_after=1,
                userId=spec.user_id,
            ) from exc
        if fresh:
            self._remember(new.id, writes.update_times[request_ref.path], doc)
        return found, fresh

    def _replay(self, key: dict[str, Any], new: NewGeneration) -> GenerationRequest:
        if key.get("fingerprint") != new.fingerprint:
            raise IdempotencyConflict(
                "Idempotency-Key was already used with a different request body",
                idempotencyKey=new.idempotency_key,
            )
        snap = self._requests().document(key["requestId"]).get()
        return d.request_from(snap.id, snap.to_dict() or {})

    @translated
    def get_request(self, request_id: str) -> GenerationRequest | None:
        if not valid_id(request_id):
            return None
        snap = self._requests().document(request_id).get()
        return d.request_from(snap.id, snap.to_dict() or {}) if snap.exists else None

    @translated
    def list_requests(
        self, user_id: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> Page[GenerationRequest]:
        query: Any = self._requests()
        if user_id is not None:
            query = query.where(filter=cond("userId", "==", user_id))
        if status is not None:
            query = query.where(filter=cond("status", "==", status.value))
        query = query.order_by("createdAt", direction=DESC).order_by("__name__", direction=DESC)
        if cursor is not None:
            at, last_id = after_time(cursor)
            query = query.start_after({"createdAt": at, "__name__": last_id})
        found = [d.request_from(s.id, s.to_dict() or {}) for s in query.limit(limit + 1).stream()]
        next_cursor = None
        if len(found) > limit:
            last = found[limit - 1]
            next_cursor = time_cursor(last.created_at, last.id)
        return Page(found[:limit], next_cursor)

    @translated
    def cancel_and_refund(self, request_id: str, now: datetime) -> bool:
        def pending(data: dict[str, Any]) -> bool:
            return Move.CANCEL.allows(Status(data["status"]))

        return self._finish_with_refund(request_id, pending, Move.CANCEL, "canceled", now)


def new_request_doc(new: NewGeneration) -> dict[str, Any]:
    spec = new.spec
    return {
        "userId": spec.user_id,
        "model": spec.model,
        "style": spec.style,
        "color": spec.color,
        "size": spec.size,
        "prompt": spec.prompt,
        "cost": new.cost,
        "status": Status.PENDING.value,
        "imageUrl": None,
        "error": None,
        "attempts": 0,
        "createdAt": d.aware(new.created_at),
        "startedAt": None,
        "completedAt": None,
        "leaseOwner": None,
        "leaseExpiresAt": None,
        "idempotencyKey": new.idempotency_key,
        "fingerprint": new.fingerprint,
        "source": "api",
        "webhook": new.webhook,
        "webhookEvents": sorted(new.webhook_events),
    }


def claimed_request_doc(new: NewGeneration, lease: Lease) -> dict[str, Any]:
    """A new request already running under the lease: its creator runs it (no claim)."""
    return {
        **new_request_doc(new),
        "status": Status.RUNNING.value,
        "attempts": 1,
        "startedAt": d.aware(new.created_at),
        "leaseOwner": lease.worker_id,
        "leaseExpiresAt": d.aware(lease.until),
    }


def generation_key_doc(request_id: str, user_id: str, key: str, fingerprint: str | None) -> dict[str, Any]:
    return {"requestId": request_id, "userId": user_id, "key": key, "fingerprint": fingerprint}
