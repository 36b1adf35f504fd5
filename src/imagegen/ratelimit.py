"""Per-user token buckets for creates: a burst of `rate_burst_per_user`, refilled at a steady rate.

The buckets live in the process (each API process limits on its own); the in-flight limit, which
is what protects the workers, is checked in the database and holds across all processes.
"""

from __future__ import annotations

import math
import threading
import time

from imagegen.domain.errors import TooManyRequests

MAX_BUCKETS = 100_000


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, user_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(user_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1:
                wait = math.ceil((1 - tokens) / self.rate)
                raise TooManyRequests(
                    f"User {user_id} is sending requests faster than {self.rate:g}/s; retry in {wait} s",
                    retry_after=wait,
                    userId=user_id,
                )
            self._buckets[user_id] = (tokens - 1, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {u: (t, at) for u, (t, at) in self._buckets.items() if now - at < full_after}
