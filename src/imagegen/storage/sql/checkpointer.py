"""SQLite's WAL copied back into the database file by a thread, not by commits."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from imagegen.storage.sql.driver import driver_connection
from imagegen.storage.sql.lazy_thread import LazyThread

log = logging.getLogger("imagegen.storage")
CHECKPOINT_INTERVAL = 0.1  # seconds between a write and the checkpoint after it


class Checkpointer:
    """Copies the SQLite WAL back into the database file, from a thread of its own.

    By SQLite's default, the commit that takes the WAL past 1,000 pages checkpoints it: writes the
    pages back and syncs the file, milliseconds to tens of milliseconds inside that commit. The
    commit may be the event loop's (GroupCommit.submit_from_loop), which then answers nobody until
    it is done. So every connection turns that off, and this thread checkpoints CHECKPOINT_INTERVAL
    after a write, with SQLite releasing the GIL while it works.

    A PASSIVE checkpoint takes no lock that writers or readers wait for, but it copies only the
    frames written before it began, and the WAL restarts from its beginning only when a write
    begins after a checkpoint that copied all of it: under a steady load the WAL would grow without
    end. So each round runs a second, short checkpoint (of the frames written meanwhile) holding
    this process's writer lock. Frames a reader's snapshot still needs wait for a later round. The
    thread starts with the first write and sleeps while nothing is written.
    """

    def __init__(self, engine: Engine, writer: threading.Lock, interval: float = CHECKPOINT_INTERVAL) -> None:
        self._engine = engine
        self._writer = writer
        self._interval = interval
        self._written = threading.Event()
        self._closed = threading.Event()
        self._thread = LazyThread(self._run, "imagegen-checkpointer")

    def written(self) -> None:
        """Called after each write transaction: a checkpoint is due within the interval."""
        if self._written.is_set():
            return
        self._written.set()
        if not self._closed.is_set():
            self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._written.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._written.wait()
            if self._closed.wait(self._interval):
                return  # closing: the last connection to close checkpoints what is left
            self._written.clear()
            try:
                self.round()
            except Exception as exc:  # the database is busy or gone: the next write tries again
                log.debug("WAL checkpoint skipped: %s", exc)

    def round(self) -> None:
        self.checkpoint()  # copies what was written before it began, while writers go on
        with self._writer:  # copies what they wrote meanwhile: now the next write restarts the WAL
            self.checkpoint()

    def checkpoint(self) -> None:
        """One PASSIVE checkpoint: copies back what no reader's snapshot still needs."""
        with self._engine.connect() as conn:
            driver_connection(conn).execute("PRAGMA wal_checkpoint(PASSIVE)")
