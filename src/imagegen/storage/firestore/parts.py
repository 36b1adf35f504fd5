"""What every part of the Firestore adapter shares: the client, the collections, the per-user locks,
the requests this process wrote last, and the webhook outbox written beside a state change.

The database (database.py) is one class made of one part per port concern (credits.py, catalog.py,
generations.py ...), all synchronous calls of google-cloud-firestore; the adapter the service layer
awaits (adapter.py) runs them on its threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import zlib
from collections import OrderedDict
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from imagegen.domain.generation import GenerationRequest
from imagegen.domain.ids import random_id
from imagegen.domain.webhooks import delivery_of
from imagegen.storage.firestore import docs as d

Transaction = firestore.Transaction
DESC = firestore.Query.DESCENDING
ASC = firestore.Query.ASCENDING
CONFIG_VERSION = "config_version"  # meta/config_version: changes with every catalog edit and revocation
KNOWN_REQUESTS = 4096  # requests this process wrote last, with their update time (see _remember)
USER_LOCK_STRIPES = 64


def cond(field: str, op: str, value: Any) -> FieldFilter:
    return FieldFilter(field, op, value)


class FirestoreParts:
    """The client and what the parts share; each part's methods are one atomic use of Firestore."""

    def __init__(self, project: str, database: str = "(default)") -> None:
        self.project = project
        self.database = database
        self.db = firestore.Client(project=project, database=database)
        # Credit moves of one user queue here rather than abort each other in Firestore: two
        # transactions on one document wait on each other's locks until one is aborted (the
        # emulator takes 2 s to decide). Other processes still contend, and are retried.
        self._user_locks = [threading.Lock() for _ in range(USER_LOCK_STRIPES)]
        # The requests this process wrote last, as written: a later change of one (its job's end) can
        # be conditional on that write's update time without reading the document again.
        self._known: OrderedDict[str, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._known_lock = threading.Lock()

    def _user_lock(self, user_id: str) -> threading.Lock:
        return self._user_locks[zlib.crc32(user_id.encode()) % USER_LOCK_STRIPES]

    def _users(self) -> firestore.CollectionReference:
        return self.db.collection(d.USERS)

    def _ledger(self, user_id: str) -> firestore.CollectionReference:
        return self.db.collection(d.USERS, user_id, d.TRANSACTIONS)

    def _requests(self) -> firestore.CollectionReference:
        return self.db.collection(d.REQUESTS)

    def _meta(self, key: str) -> firestore.DocumentReference:
        return self.db.collection(d.META).document(key)

    def _generation_key(self, user_id: str, key: str) -> firestore.DocumentReference:
        """The document that gives a user's Idempotency-Key its one request: a second create() fails."""
        digest = hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()
        return self.db.collection(d.GENERATION_KEYS).document(digest)

    def _bump_config(self, writer: Any) -> None:
        """Changes the configuration version in the same write as the change it stands for."""
        writer.set(self._meta(CONFIG_VERSION), {"value": random_id()})

    def _remember(self, request_id: str, update_time: Any, data: dict[str, Any]) -> None:
        with self._known_lock:
            self._known[request_id] = (update_time, data)
            self._known.move_to_end(request_id)
            while len(self._known) > KNOWN_REQUESTS:
                self._known.popitem(last=False)

    def _recall(self, request_id: str) -> tuple[Any, dict[str, Any]] | None:
        with self._known_lock:
            return self._known.pop(request_id, None)

    def _enqueue_webhook(self, writer: Any, request: GenerationRequest, event: str, now: datetime) -> None:
        """Adds the webhook outbox document to the same transaction or batch as the state change."""
        delivery = delivery_of(request, event, now)
        if delivery is None:
            return
        writer.create(
            self.db.collection(d.WEBHOOKS).document(delivery.id),
            {
                "generationRequestId": delivery.generation_request_id,
                "event": delivery.event,
                "url": delivery.url,
                "payload": delivery.payload,
                "state": "pending",
                "attempts": 0,
                "nextAttemptAt": d.aware(now),
                "leaseExpiresAt": None,
                "lastError": None,
                "createdAt": d.aware(now),
                "deliveredAt": None,
            },
        )

    def _update_if_exists(self, ref: firestore.DocumentReference, changes: dict[str, Any]) -> None:
        with contextlib.suppress(gexc.NotFound):
            ref.update(changes)


class Known:
    """A request document as this process last wrote it: enough to write it again conditionally."""

    def __init__(self, reference: firestore.DocumentReference, update_time: Any) -> None:
        self.reference = reference
        self.update_time = update_time


def version_of(snap: Any) -> str:
    return str((snap.to_dict() or {}).get("value") or "") if snap.exists else ""
