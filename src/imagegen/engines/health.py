"""Deployment health in this process: consecutive failures, and cool-downs of failing deployments.

A deployment that keeps failing is skipped for a while instead of costing every job its retries
(LiteLLM's proxy does the same with its `allowed_fails` and `cooldown_time`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from imagegen.engines.errors import EngineError, Failure
from imagegen.engines.run import Clock


@dataclass(frozen=True)
class CooldownPolicy:
    failures: int = 3  # consecutive transient failures before a cool-down
    seconds: float = 60.0


class Health:
    def __init__(self, policy: CooldownPolicy = CooldownPolicy(), clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def cooling_until(self, key: str) -> float | None:
        """When the deployment's cool-down ends, if it is cooling now."""
        with self._lock:
            until = self._until.get(key)
        return until if until is not None and until > self._clock() else None

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def failed(self, key: str, error: EngineError) -> None:
        if error.failure is Failure.PERMANENT:
            return  # the request was refused, not the deployment: it says nothing of its health
        with self._lock:
            count = self._failures.get(key, 0) + 1
            self._failures[key] = count
        if error.failure is Failure.DEPLOYMENT or count >= self.policy.failures:
            self.cool(key, self.policy.seconds)

    def cool(self, key: str, seconds: float) -> None:
        """Skips the deployment for `seconds` (or longer, if it is already cooling for longer)."""
        with self._lock:
            until = self._clock() + seconds
            self._until[key] = max(until, self._until.get(key, until))
            self._failures.pop(key, None)
