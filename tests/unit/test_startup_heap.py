"""The API process settles once when ready to serve: its startup heap frozen, young objects
collected less often (cycles still), a shorter GIL switch."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc, sys, weakref
from imagegen.api.app import GC_YOUNG_THRESHOLD, GIL_SWITCH_INTERVAL, settle_for_serving
assert gc.get_freeze_count() == 0
settle_for_serving()
frozen = gc.get_freeze_count()
kept = [[n] for n in range(10_000)]  # what serving allocates later stays collectable
settle_for_serving()
assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL
assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD


class Node:
    pass


first = Node()
first.me = first  # a cycle: only the collector frees it
gone = weakref.ref(first)
del first
for _ in range(2 * GC_YOUNG_THRESHOLD):  # allocations alone set off a collection
    Node().me = None
    kept.append([])
assert gone() is None
print(frozen, gc.get_freeze_count())
"""


def test_startup_objects_are_frozen_once_young_ones_collected_later_and_the_gil_handed_on_sooner() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    frozen, after = map(int, out.stdout.split())
    assert frozen > 50_000  # the imported framework: modules, classes, schemas
    assert after == frozen
