"""The composition root: builds storage, image store, model, workers from Settings, in one place."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from imagegen import service
from imagegen.background.completions import Completions
from imagegen.background.key_uses import record_key_uses
from imagegen.background.listener import listen
from imagegen.background.scheduler import Scheduler
from imagegen.background.signal import JobSignal
from imagegen.background.tasks import Tasks
from imagegen.background.webhooks import Dispatcher, signing_secret
from imagegen.background.workers import WorkerPool
from imagegen.clock import utcnow
from imagegen.engines.registry import Registry
from imagegen.models.simulated import SimulatedModel
from imagegen.ports import ImageStore, Storage
from imagegen.ratelimit import RateLimiter
from imagegen.service.config_cache import ConfigCache
from imagegen.service.key_uses import KeyUses
from imagegen.settings import Settings
from imagegen.storage import open_storage_adapter
from imagegen.storage.s3_images import open_image_store

log = logging.getLogger("imagegen")


async def open_storage(settings: Settings) -> Storage:
    """Connects, applies migrations and, on a new database, loads the initial data set."""
    prepare_files(settings)
    storage = open_storage_adapter(settings.sql_url)
    await storage.migrate()
    first = await service.first_start(storage, utcnow())
    if first is not None:
        write_initial_keys(settings, first)
    return storage


def prepare_files(settings: Settings) -> None:
    """Creates the data folder (0700) and a new SQLite file (0600) readable by the owner alone.

    The database holds the webhook signing secret and the idempotency store's answers: SQLite gives
    its WAL and shared-memory files the database file's mode, so creating it 0600 covers all three.
    Folders and files that already exist keep the modes their owner gave them.
    """
    _private_dir(settings.data_dir)
    url = make_url(settings.sql_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        _private_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


def _private_dir(path: Path) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


def write_initial_keys(settings: Settings, first: service.FirstStart) -> Path:
    """Writes the first start's keys once, to a new file only the owner can read, and says where.

    The file is created exclusively and never through a symlink: if `initial-keys.txt` exists
    already (another database's keys, or a link planted there), it is left alone and the keys go
    to `initial-keys.<n>.txt` instead. The keys themselves are never logged.
    """
    lines = [f"admin {first.admin.key} {first.admin.id}"]
    lines += [f"{user} {issued.key} {issued.id}" for user, issued in first.users.items()]
    text = (
        "# imagegen API keys created at first start (shown once; stored hashed)\n"
        "# who, the key, its id (`imagegen keys list`, `imagegen keys revoke ID`)\n" + "\n".join(lines) + "\n"
    )
    path = settings.keys_file
    for n in range(1, 1000):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            log.warning("%s exists already: left as it is", path)
            path = settings.keys_file.with_suffix(f".{n}.txt")
            continue
        with os.fdopen(fd, "w") as out:
            out.write(text)
        log.warning(
            "first start: initial data loaded; the admin key and the users' keys are in %s "
            "(readable by this account only; the only copy: keys are stored hashed)",
            path.resolve(),
        )
        return path
    raise RuntimeError(f"could not create a keys file beside {settings.keys_file}")


@dataclass
class Runtime:
    """Everything one imagegen process runs, chosen by its role (all, api, worker, scheduler).

    Built and started on the process's event loop: the background work is tasks on that loop
    (imagegen.background), started and stopped together through `tasks`.
    """

    settings: Settings
    storage: Storage
    images: ImageStore
    signal: JobSignal = field(default_factory=JobSignal)
    completions: Completions = field(default_factory=Completions)
    tasks: Tasks = field(default_factory=Tasks)
    key_uses: KeyUses = field(default_factory=KeyUses)  # the keys' last use, written in the background
    limiter: RateLimiter = field(init=False)
    config: ConfigCache = field(init=False)  # the create path's catalog and keys
    # The engines installed here (entry points): what a binding set through this process may name.
    engines: Registry = field(default_factory=Registry.discover)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_per_user_per_second, self.settings.rate_burst_per_user)
        self.config = ConfigCache(self.storage)

    @classmethod
    async def build(cls, settings: Settings) -> Runtime:
        images = open_image_store(settings.image_store_url, settings.images_dir)
        return cls(settings, await open_storage(settings), images)

    async def start(self) -> None:
        settings = self.settings
        self.tasks.start("imagegen-listen", listen(self.storage, self.signal, self.completions))
        if settings.serves_http:
            uses = record_key_uses(self.key_uses, self.storage, settings.key_use_interval_seconds)
            self.tasks.start("imagegen-key-uses", uses)
        if settings.runs_jobs:
            self._workers().start(self.tasks)
            self.tasks.start("imagegen-webhooks", (await self._dispatcher()).run())
        if settings.runs_scheduler:
            self.tasks.start("imagegen-scheduler", Scheduler(self.storage, settings).run())

    def _workers(self) -> WorkerPool:
        settings = self.settings
        model = SimulatedModel(failure_rate=settings.ai_failure_rate, latency_ms=settings.model_latency_ms)
        return WorkerPool(self.storage, model, self.images, settings, self.signal, self.completions.finished)

    async def _dispatcher(self) -> Dispatcher:
        secret = await signing_secret(self.storage, self.settings)
        base_url = self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"
        return Dispatcher(self.storage, self.settings, secret, base_url)

    async def stop(self) -> None:
        self.signal.wake_all()
        await self.tasks.stop()
        await self.key_uses.flush(self.storage)  # the last interval's uses
        await self.storage.close()
