"""A scrape of /metrics: who may read it, and the answer (the counts, and the queues read now)."""

from __future__ import annotations

import hmac
import logging
from datetime import datetime
from typing import Protocol

from imagegen import metrics
from imagegen.domain.errors import Forbidden, StorageUnavailable
from imagegen.ports import Keys
from imagegen.service.catalog import QueueReader, model_queues
from imagegen.service.keys import authenticate

log = logging.getLogger("imagegen.metrics")


class ScrapeStorage(QueueReader, Keys, Protocol):
    """The queues to count, the keys to authorize the scrape with."""


async def authorize_scrape(
    storage: Keys, token: str | None, *, metrics_token: str | None, no_auth: bool
) -> None:
    """An admin key, or the metrics token when one is set (compared in constant time)."""
    if no_auth:
        return
    if (
        metrics_token is not None
        and token is not None
        and hmac.compare_digest(token.encode(), metrics_token.encode())
    ):
        return
    key = await authenticate(storage, token)
    if not key.is_admin:
        raise Forbidden("/metrics needs an admin key or the metrics token")


async def scrape(storage: ScrapeStorage, now: datetime) -> bytes:
    """The Prometheus text; without the queue gauges when the database does not answer."""
    try:
        queues = [(q.model, q.pending, q.oldest_pending_age_s) for q in await model_queues(storage, now)]
    except StorageUnavailable as exc:
        log.warning("metrics without the queues: %s", exc.message)
        queues = []
    return metrics.render(queues)
