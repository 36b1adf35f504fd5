"""The composition root: builds storage, image store, model, workers from Settings, in one place."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Protocol

from imagegen import service
from imagegen.clock import utcnow
from imagegen.completions import Completions
from imagegen.config_cache import ConfigCache
from imagegen.models.simulated import SimulatedModel
from imagegen.ports import GroupCommitted, ImageStore, Storage
from imagegen.ratelimit import RateLimiter
from imagegen.scheduler import Scheduler
from imagegen.settings import Settings
from imagegen.storage import open_storage_adapter
from imagegen.storage.s3_images import open_image_store
from imagegen.webhooks import Dispatcher, signing_secret
from imagegen.worker import JobSignal, WorkerPool

log = logging.getLogger("imagegen")


def open_storage(settings: Settings) -> Storage:
    """Connects, applies migrations and, on a new database, loads the initial data set."""
    storage = open_storage_adapter(settings.sql_url)
    storage.migrate()
    first = service.first_start(storage, utcnow())
    if first is not None:
        write_initial_keys(settings, first)
    return storage


def write_initial_keys(settings: Settings, first: service.FirstStart) -> None:
    """Writes the first start's keys once, readable only by the owner, and says where they are."""
    path = settings.keys_file
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"admin {first.admin_key}"] + [f"{user} {key}" for user, key in first.user_keys.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# imagegen API keys created at first start (shown once; stored hashed)\n")
        out.write("\n".join(lines) + "\n")
    log.warning("first start: initial data loaded; API keys written to %s", path.resolve())
    for line in lines:
        log.warning("  %s", line)


class Background(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Listener:
    """Turns other processes' NOTIFYs (PostgreSQL) into local wake-ups; a no-op on SQLite."""

    def __init__(self, storage: Storage, signal: JobSignal, completions: Completions) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=storage.listen,
            args=(signal.enqueued, completions.finished, self._stop),
            name="imagegen-listen",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Runtime:
    """Everything one imagegen process runs, chosen by its role (all, api, worker, scheduler)."""

    settings: Settings
    storage: Storage
    images: ImageStore
    signal: JobSignal = field(default_factory=JobSignal)
    completions: Completions = field(default_factory=Completions)
    background: list[Background] = field(default_factory=list)
    limiter: RateLimiter = field(init=False)
    config: ConfigCache | None = field(init=False)  # the create path's cache (SQL storage only)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_per_user_per_second, self.settings.rate_burst_per_user)
        self.config = ConfigCache(self.storage) if isinstance(self.storage, GroupCommitted) else None

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        images = open_image_store(settings.image_store_url, settings.images_dir)
        runtime = cls(settings, open_storage(settings), images)
        runtime.background.append(Listener(runtime.storage, runtime.signal, runtime.completions))
        if settings.runs_jobs:
            runtime.background += [runtime._workers(), runtime._dispatcher()]
        if settings.runs_scheduler:
            runtime.background.append(Scheduler(runtime.storage, settings))
        return runtime

    def _workers(self) -> WorkerPool:
        settings = self.settings
        model = SimulatedModel(failure_rate=settings.ai_failure_rate, latency_ms=settings.model_latency_ms)
        return WorkerPool(self.storage, model, self.images, settings, self.signal, self.completions.finished)

    def _dispatcher(self) -> Dispatcher:
        secret = signing_secret(self.storage, self.settings)
        base_url = self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"
        return Dispatcher(self.storage, self.settings, secret, base_url)

    def start(self) -> None:
        for part in self.background:
            part.start()

    def stop(self) -> None:
        for part in reversed(self.background):
            part.stop()
        self.storage.close()
