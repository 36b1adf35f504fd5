"""A process's engines: built once per deployment, shared by its workers, closed with the process.

This is what a worker calls: `fleet.generate(binding, request, run)`. The health (cool-downs) and
the concurrency slots live here too, so every worker thread of the process sees the same ones.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from imagegen.domain.errors import ImagegenError
from imagegen.engines import errors
from imagegen.engines.binding import Deployment, ModelBinding
from imagegen.engines.health import Health
from imagegen.engines.port import Engine
from imagegen.engines.registry import Registry
from imagegen.engines.request import ImageRequest
from imagegen.engines.routing import RetryPolicy, Router
from imagegen.engines.run import Run
from imagegen.engines.slots import Slots


class Fleet:
    def __init__(
        self,
        registry: Registry,
        *,
        environ: Mapping[str, str] | None = None,
        health: Health | None = None,
        policy: RetryPolicy | None = None,
        slots: Slots | None = None,
    ) -> None:
        self.registry = registry
        self.health = health or Health()
        self.slots = slots or Slots()  # per process, unless given ones shared across processes
        self._environ = os.environ if environ is None else environ
        self._policy = policy or RetryPolicy()
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def generate(self, binding: ModelBinding, request: ImageRequest, run: Run) -> bytes:
        router = Router(
            binding.deployments, self.engine, health=self.health, slots=self.slots, policy=self._policy
        )
        return router.generate(request, run)

    def engine(self, deployment: Deployment) -> Engine:
        """The deployment's engine, built on first use (an edited binding is a new key, a new engine)."""
        with self._lock:
            engine = self._engines.get(deployment.key)
            if engine is None:
                engine = self._engines[deployment.key] = self._build(deployment)
            return engine

    def _build(self, deployment: Deployment) -> Engine:
        try:
            kind = self.registry.kind(deployment.engine)
        except ImagegenError as exc:  # bound when it was installed; this worker lacks the package
            raise errors.deployment(exc.message) from exc
        return kind.build(deployment.settings, self._environ)

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()
