"""The API process settles once when ready to serve: its startup heap frozen, a shorter GIL switch."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc, sys
from imagegen.api.app import GIL_SWITCH_INTERVAL, settle_for_serving
assert gc.get_freeze_count() == 0
settle_for_serving()
frozen = gc.get_freeze_count()
kept = [[n] for n in range(10_000)]  # what serving allocates later stays collectable
settle_for_serving()
assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL
print(frozen, gc.get_freeze_count())
"""


def test_startup_objects_are_frozen_once_and_the_gil_is_handed_on_sooner() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    frozen, after = map(int, out.stdout.split())
    assert frozen > 50_000  # the imported framework: modules, classes, schemas
    assert after == frozen
