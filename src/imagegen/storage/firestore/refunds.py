"""A request ended with its one refund (a failed job, a canceled request), on Firestore.

The refund has the fixed id `{requestId}_refund` and is written with create(), so a second one for
the same request cannot exist whatever the retries; the request's change, the refund, the user's
balance and the webhook delivery commit together, only if none changed since they were read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from imagegen.domain.generation import Move, valid_id
from imagegen.domain.ledger import EntryType
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.conditional import Reads, Writes, commit_unchanged
from imagegen.storage.firestore.credits import CreditMove, user_state
from imagegen.storage.firestore.parts import FirestoreParts


class FirestoreRefunds(FirestoreParts):
    def _finish_with_refund(
        self,
        request_id: str,
        condition: Callable[[dict[str, Any]], bool],
        ending: Move,
        error: str,
        now: datetime,
    ) -> bool:
        if not valid_id(request_id):
            return False
        ref = self._requests().document(request_id)
        known = self._recall(request_id)  # as this process wrote it: its user, if not its state now
        found = known[1] if known is not None else ref.get().to_dict()
        if found is None or (known is None and not condition(found)):
            return False  # a quick no: the write below checks again
        user_ref = self._users().document(str(found["userId"]))

        def decide(reads: Reads, writes: Writes) -> bool:
            snap = reads[ref]
            data = snap.to_dict() or {}
            if not snap.exists or not condition(data):
                return False
            changes = {
                "status": ending.target.value,
                "error": error,
                "completedAt": d.aware(now),
                "leaseOwner": None,
                "leaseExpiresAt": None,
            }
            refund_id = d.entry_id(request_id, EntryType.REFUND)
            refund = CreditMove(
                user_state(reads[user_ref]),
                EntryType.REFUND,
                int(data["cost"]),
                request_id,
                error,
                now,
                refund_id,
            )
            writes.update(snap, changes)
            writes.create(self._ledger(refund.user.id).document(refund_id), refund.entry_doc)
            writes.update(reads[user_ref], refund.user_changes(in_flight=-1))
            self._enqueue_webhook(writes, d.request_from(request_id, {**data, **changes}), "completed", now)
            return True

        with self._user_lock(user_ref.id):
            done, _ = commit_unchanged(self.db, [ref, user_ref], decide)
        return done
