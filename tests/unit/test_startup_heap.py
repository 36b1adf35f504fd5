"""The API process freezes its startup heap once, so full collections stop walking it."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from imagegen.api.app import freeze_startup_heap
assert gc.get_freeze_count() == 0
freeze_startup_heap()
frozen = gc.get_freeze_count()
kept = [[n] for n in range(10_000)]  # what serving allocates later stays collectable
freeze_startup_heap()
print(frozen, gc.get_freeze_count())
"""


def test_startup_objects_are_frozen_once() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    frozen, after = map(int, out.stdout.split())
    assert frozen > 50_000  # the imported framework: modules, classes, schemas
    assert after == frozen
