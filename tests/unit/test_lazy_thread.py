"""The SQL adapter's own threads start once, whoever asks first, and are joined on close."""

from __future__ import annotations

import threading

from imagegen.storage.sql.lazy_thread import LazyThread


def test_many_threads_asking_at_once_start_one_thread_and_join_waits_for_it() -> None:
    release = threading.Event()
    runs: list[str] = []

    def work() -> None:
        release.wait(5)
        runs.append(threading.current_thread().name)

    lazy = LazyThread(work, "lazy-under-test")
    assert not lazy.started
    askers = [threading.Thread(target=lazy.start) for _ in range(16)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()

    assert lazy.started
    assert [t.name for t in threading.enumerate()].count("lazy-under-test") == 1
    release.set()
    lazy.join()
    assert runs == ["lazy-under-test"]
    assert "lazy-under-test" not in [t.name for t in threading.enumerate()]


def test_join_before_any_start_returns_at_once() -> None:
    lazy = LazyThread(lambda: None, "never-started")
    lazy.join()
    assert not lazy.started
