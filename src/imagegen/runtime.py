"""The composition root: builds storage, image store, model, workers from Settings, in one place."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from imagegen import service
from imagegen.clock import utcnow
from imagegen.completions import Completions
from imagegen.images import FolderImageStore
from imagegen.models.simulated import SimulatedModel
from imagegen.ports import ImageStore, Storage
from imagegen.ratelimit import RateLimiter
from imagegen.scheduler import Scheduler
from imagegen.settings import Settings
from imagegen.storage.sql.adapter import SqlStorage
from imagegen.webhooks import Dispatcher, signing_secret
from imagegen.worker import JobSignal, WorkerPool

log = logging.getLogger("imagegen")


def open_storage(settings: Settings) -> Storage:
    """Connects, applies migrations and, on a new database, loads the initial data set."""
    storage = SqlStorage(settings.sql_url)
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


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    images: ImageStore
    signal: JobSignal = field(default_factory=JobSignal)
    completions: Completions = field(default_factory=Completions)
    pool: WorkerPool | None = None
    dispatcher: Dispatcher | None = None
    scheduler: Scheduler | None = None
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_per_user_per_second, self.settings.rate_burst_per_user)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        runtime = cls(settings, open_storage(settings), FolderImageStore(settings.images_dir))
        model = SimulatedModel(failure_rate=settings.ai_failure_rate, latency_ms=settings.model_latency_ms)
        runtime.pool = WorkerPool(
            runtime.storage,
            model,
            runtime.images,
            settings,
            runtime.signal,
            runtime.completions.finished,
        )
        secret = signing_secret(runtime.storage, settings)
        base_url = settings.public_url or f"http://{settings.host}:{settings.port}"
        runtime.dispatcher = Dispatcher(runtime.storage, settings, secret, base_url)
        runtime.scheduler = Scheduler(runtime.storage, settings)
        return runtime

    def start(self) -> None:
        if self.pool is not None:
            self.pool.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        if self.scheduler is not None:
            self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.pool is not None:
            self.pool.stop()
        self.storage.close()
