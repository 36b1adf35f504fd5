"""Engine slots on Firestore: a deployment's numbered slots, one document each while held
(`engineSlots/{key}_{slot}`). A slot is taken by creating its document, or, once its lease ran out,
by an update conditional on the document's update time: of two processes after the same slot,
exactly one write succeeds and the other moves on to the next slot (no transaction to contend)."""

from __future__ import annotations

import contextlib
from datetime import datetime

from google.api_core import exceptions as gexc

from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import translated
from imagegen.storage.firestore.parts import FirestoreParts, cond

ENGINE_SLOTS = "engineSlots"


class FirestoreSlots(FirestoreParts):
    @translated
    def take_slot(self, key: str, limit: int, holder: str, until: datetime, now: datetime) -> bool:
        return any(self._take(key, slot, holder, until, now) for slot in range(limit))

    def _take(self, key: str, slot: int, holder: str, until: datetime, now: datetime) -> bool:
        ref = self.db.collection(ENGINE_SLOTS).document(f"{key}_{slot}")
        held = {"key": key, "slot": slot, "holder": holder, "expiresAt": d.aware(until)}
        try:
            ref.create(held)
            return True
        except gexc.Conflict:
            pass  # held, or held once: taken over below if its lease ran out
        snap = ref.get()
        expires = d.utc((snap.to_dict() or {}).get("expiresAt")) if snap.exists else None
        if snap.exists and expires is not None and expires > now:
            return False
        try:
            if snap.exists:
                ref.update(held, option=self.db.write_option(last_update_time=snap.update_time))
            else:
                ref.create(held)  # released in between
        except (gexc.FailedPrecondition, gexc.Conflict, gexc.NotFound):
            return False  # another process took it first
        return True

    @translated
    def release_slot(self, key: str, holder: str) -> None:
        query = (
            self.db.collection(ENGINE_SLOTS)
            .where(filter=cond("key", "==", key))
            .where(filter=cond("holder", "==", holder))
        )
        for snap in query.stream():
            # If its lease ran out and another holder took it over in between, it is theirs now.
            with contextlib.suppress(gexc.FailedPrecondition):
                snap.reference.delete(option=self.db.write_option(last_update_time=snap.update_time))
