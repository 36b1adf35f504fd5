"""SQLite's WAL is checkpointed by a thread of its own, never inside a commit.

A commit that checkpoints syncs the database file: milliseconds that the event loop, which commits
batches of creates itself, would spend answering nobody. What can be observed from outside: with
commits not checkpointing, the WAL file grows past SQLite's 1,000-page auto-checkpoint; the
checkpointer copies it back into the database file shortly after the writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from imagegen.storage.sql.engines import create_sql_engine
from imagegen.storage.sql.transactions import Transactions, WriterBusy

PAGE = 4096
ROWS = 2_000  # ~8 MB of blobs: twice what SQLite's default auto-checkpoint lets the WAL reach
DEFAULT_AUTOCHECKPOINT_BYTES = 1_000 * PAGE


def transactions(path: Path, interval: float) -> Iterator[Transactions]:
    engine = create_sql_engine(f"sqlite:///{path}")
    tx = Transactions(engine, checkpoint_interval=interval)
    with tx.write() as conn:
        conn.execute(text("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)"))
    yield tx
    tx.close()
    engine.dispose()


@pytest.fixture
def never(tmp_path: Path) -> Iterator[Transactions]:
    """A checkpointer that would wait an hour: only commits could checkpoint."""
    yield from transactions(tmp_path / "never.db", interval=3600)


@pytest.fixture
def soon(tmp_path: Path) -> Iterator[Transactions]:
    yield from transactions(tmp_path / "soon.db", interval=0.05)


def fill(tx: Transactions, loop: bool = False, pause: float = 0.0, spin: float = 0.0) -> None:
    for _ in range(ROWS // 20):
        time.sleep(pause)
        until = time.perf_counter() + spin
        while time.perf_counter() < until:  # work that keeps the GIL, as the event loop's would
            pass
        while True:
            try:
                with tx.write_now() if loop else tx.write() as conn:
                    conn.execute(
                        text("INSERT INTO blobs (data) VALUES (randomblob(:size))"),
                        [{"size": PAGE}] * 20,
                    )
                break
            except WriterBusy:  # the checkpointer holds the writer lock: the loop tries again
                time.sleep(0.001)


def wal_bytes(tx: Transactions) -> int:
    return Path(f"{tx.engine.url.database}-wal").stat().st_size


def db_bytes(tx: Transactions) -> int:
    return Path(str(tx.engine.url.database)).stat().st_size


def test_commits_never_checkpoint(never: Transactions) -> None:
    fill(never)
    fill(never, loop=True)

    # SQLite's default would have checkpointed and restarted the WAL at 1,000 pages.
    assert wal_bytes(never) > 4 * DEFAULT_AUTOCHECKPOINT_BYTES
    assert db_bytes(never) < DEFAULT_AUTOCHECKPOINT_BYTES  # nothing was copied back
    with never.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM blobs")).scalar_one() == 2 * ROWS


def test_the_checkpointer_copies_the_wal_back_after_writes(soon: Transactions) -> None:
    fill(soon, loop=True)  # the event loop's transactions wake it too

    deadline = time.monotonic() + 10
    while db_bytes(soon) < ROWS * PAGE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db_bytes(soon) >= ROWS * PAGE

    # Under a steady load (a write every 5 ms, for a second) the WAL restarts from its beginning
    # after each round instead of growing.
    size = wal_bytes(soon)
    fill(soon, pause=0.005)
    assert wal_bytes(soon) < size + ROWS * PAGE // 2


def checkpointers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "imagegen-checkpointer"]


def test_closing_stops_the_checkpointer(tmp_path: Path) -> None:
    before = set(checkpointers())  # other storages' of this process, if any are open
    for tx in transactions(tmp_path / "closing.db", interval=0.05):
        fill(tx)
        [thread] = set(checkpointers()) - before
        assert thread.is_alive()
    assert not thread.is_alive() and set(checkpointers()) <= before


def test_the_wal_restarts_under_back_to_back_writes(soon: Transactions) -> None:
    """The event loop's pattern: a batch, a millisecond of other work, the next batch."""
    fill(soon, loop=True)
    size = wal_bytes(soon)
    for _ in range(3):
        fill(soon, loop=True, spin=0.001)
    assert wal_bytes(soon) < size + 2 * ROWS * PAGE
