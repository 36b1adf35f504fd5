"""The scheduler's runs on Firestore: each scheduled period is claimed once, by one process."""

from __future__ import annotations

from datetime import datetime

from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import run_transaction, translated
from imagegen.storage.firestore.parts import DESC, FirestoreParts, Transaction, cond


class FirestoreSchedule(FirestoreParts):
    @translated
    def claim_scheduled_run(self, period_id: str, owner: str, now: datetime, stale_before: datetime) -> bool:
        ref = self.db.collection(d.SCHEDULED_RUNS).document(period_id)

        def claim(tx: Transaction) -> bool:
            snap = ref.get(transaction=tx)
            claim = {"periodId": period_id, "claimedBy": owner, "claimedAt": d.aware(now), "finished": False}
            if not snap.exists:
                tx.create(ref, {**claim, "finishedAt": None})
                return True
            data = snap.to_dict() or {}
            claimed_at = d.utc(data.get("claimedAt"))
            if data.get("finished") or (claimed_at is not None and claimed_at >= stale_before):
                return False
            tx.update(ref, claim)  # the process that claimed it died before finishing: take over
            return True

        return run_transaction(self.db, claim)

    @translated
    def finish_scheduled_run(self, period_id: str, now: datetime) -> None:
        ref = self.db.collection(d.SCHEDULED_RUNS).document(period_id)
        self._update_if_exists(ref, {"finished": True, "finishedAt": d.aware(now)})

    @translated
    def last_scheduled_run(self) -> str | None:
        query = (
            self.db.collection(d.SCHEDULED_RUNS)
            .where(filter=cond("finished", "==", True))
            .order_by("periodId", direction=DESC)
            .limit(1)
        )
        for snap in query.stream():
            return str((snap.to_dict() or {})["periodId"])
        return None
