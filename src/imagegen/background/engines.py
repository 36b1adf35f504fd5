"""The engines a process's jobs run on: one registry and one Fleet per process, shared by its
workers (the embedded server's, a `--role worker` process's, a Cloud Function instance's).

A model's stored binding names its deployments; a model without one runs the simulated engine with
the model's own failure rate and latency (or AI_FAILURE_RATE / IMAGEGEN_MODEL_LATENCY_MS, which
override every unbound model). The engine port is synchronous: each generation runs on a thread of
this pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from imagegen.background.slots import SharedSlots
from imagegen.domain.catalog import ModelSettings
from imagegen.engines.binding import Deployment, ModelBinding, parse_binding
from imagegen.engines.fleet import Fleet
from imagegen.engines.registry import Registry
from imagegen.engines.request import ImageRequest
from imagegen.engines.routing import RetryPolicy
from imagegen.engines.run import Run
from imagegen.engines.simulated import SimulatedSettings
from imagegen.ports import EngineSlots

UNLIMITED = 256  # the most `concurrency` a deployment may have
MAX_THREADS = 256  # generations at once in one process, waiting on engines included


class JobEngines:
    def __init__(
        self,
        registry: Registry,
        *,
        failure_rate: float | None = None,
        latency_ms: int | None = None,
        environ: Mapping[str, str] | None = None,
        threads: int = 16,
        policy: RetryPolicy | None = None,
        shared_slots: EngineSlots | None = None,
        owner: str = "imagegen",
    ) -> None:
        """`shared_slots`: the storage holding each deployment's `concurrency` across processes
        (background/slots.py); without it, concurrency is limited per process."""
        self.registry = registry
        self._slots = SharedSlots(shared_slots, owner) if shared_slots is not None else None
        self.fleet = Fleet(registry, environ=environ, policy=policy, slots=self._slots)
        self._failure_rate = failure_rate
        self._latency_ms = latency_ms
        # A thread per running generation, and as many again for ones given up (a timeout) whose
        # engine has not returned yet: their results are discarded when they come.
        self._pool = ThreadPoolExecutor(min(MAX_THREADS, threads), thread_name_prefix="imagegen-engine")
        self._bindings: dict[tuple[str, str], ModelBinding] = {}
        self._lock = threading.Lock()

    def binding(self, settings: ModelSettings) -> ModelBinding:
        """The model's binding as stored, or the simulated engine with its figures when unbound.

        Raises InvalidBinding when the stored binding no longer validates here (an engine this
        process lacks): the job fails and is refunded."""
        if not settings.bound:
            failure_rate = settings.failure_rate if self._failure_rate is None else self._failure_rate
            latency_ms = settings.latency_ms if self._latency_ms is None else self._latency_ms
            # Unbound: the stand-in runs as many at once as the workers do, limited in no storage.
            simulated = SimulatedSettings(
                failure_rate=failure_rate, latency_ms=latency_ms, concurrency=UNLIMITED
            )
            deployment = Deployment("simulated", simulated)
            if self._slots is not None:
                self._slots.per_process(deployment.key)
            return ModelBinding(settings.name, (deployment,))
        key = (settings.name, repr(settings.deployments))
        with self._lock:
            found = self._bindings.get(key)
        if found is None:
            found = parse_binding(settings.name, settings.binding_json(), self.registry)
            with self._lock:
                if len(self._bindings) > 1000:
                    self._bindings.clear()
                self._bindings[key] = found
        return found

    def start(self, binding: ModelBinding, request: ImageRequest, run: Run) -> asyncio.Future[bytes]:
        """The generation, started on a thread: a future of the checked PNG (or its EngineError)."""
        loop = asyncio.get_running_loop()
        if self._slots is not None:
            self._slots.loop = loop
        return loop.run_in_executor(self._pool, self.fleet.generate, binding, request, run)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.fleet.close()
