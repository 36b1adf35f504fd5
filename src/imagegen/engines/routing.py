"""Routing with fallbacks: one generation tried on a model's deployments, in their order.

Pure policy over the engine port: no storage, no real clock or sleep of its own (the run's are used,
so tests drive it with a fake clock). A transient failure is tried again on the same deployment
after a back-off that honours Retry-After, then the next deployment is tried; a deployment failure
moves on at once; a permanent failure, a cancel or the run's deadline ends it all.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imagegen.engines import errors
from imagegen.engines.binding import Deployment
from imagegen.engines.errors import EngineError, Failure, GenerationCanceled
from imagegen.engines.health import Health
from imagegen.engines.output import checked_png
from imagegen.engines.port import Engine
from imagegen.engines.request import ImageRequest
from imagegen.engines.run import Run
from imagegen.engines.slots import Slots

log = logging.getLogger("imagegen.engines")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # further attempts on the same deployment after a transient failure
    backoff_s: float = 0.5  # the first wait, doubled at each retry
    max_backoff_s: float = 10.0  # a longer Retry-After cools the deployment and moves on instead
    jitter: float = 0.2  # +/- this fraction, so that workers failing together do not retry together

    def backoff(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        wait = min(self.max_backoff_s, self.backoff_s * 2**retry) * (
            1 + rng.uniform(-self.jitter, self.jitter)
        )
        return max(wait, retry_after or 0.0)


class Router:
    def __init__(
        self,
        deployments: Sequence[Deployment],
        engine_for: Callable[[Deployment], Engine],
        *,
        health: Health,
        slots: Slots,
        policy: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
    ) -> None:
        self._deployments = tuple(deployments)
        self._engine_for = engine_for
        self._health = health
        self._slots = slots
        self._policy = policy
        self._rng = rng or random.Random()

    def generate(self, request: ImageRequest, run: Run) -> bytes:
        """A checked PNG; EngineError once every deployment failed or the run ran out of time;
        GenerationCanceled once the run is canceled."""
        failures: list[EngineError] = []
        untried = list(self._deployments)
        while (deployment := self._next(untried, run)) is not None:
            untried.remove(deployment)
            png = self._on(deployment, request, run, failures)
            if png is not None:
                return png
        raise self._outcome(failures, run)

    def _next(self, untried: list[Deployment], run: Run) -> Deployment | None:
        """The first untried deployment not cooling down; if all are cooling, the one whose cool-down
        ends first, once it ends, when that is before the deadline."""
        if not untried or run.canceled or run.expired:
            return None
        cooling = [(self._health.cooling_until(d.key), i) for i, d in enumerate(untried)]
        ready = [i for until, i in cooling if until is None]
        if ready:
            return untried[ready[0]]
        until, first = min((until, i) for until, i in cooling if until is not None)
        if until - run.now() >= run.remaining():
            return None
        run.wait(until - run.now())
        return None if run.canceled else untried[first]

    def _on(
        self, deployment: Deployment, request: ImageRequest, run: Run, failures: list[EngineError]
    ) -> bytes | None:
        """The image from this deployment, or None to move on (the failures are noted)."""
        for retry in range(self._policy.retries + 1):
            try:
                return self._attempt(deployment, request, run)
            except EngineError as error:
                failures.append(error)
                self._health.failed(deployment.key, error)
                log.warning(
                    "deployment %s failed (%s): %s", deployment.key, error.failure.value, error.message
                )
                if error.failure is Failure.PERMANENT:
                    raise
                if not self._retry(deployment, error, retry, run):
                    return None
        return None

    def _retry(self, deployment: Deployment, error: EngineError, retry: int, run: Run) -> bool:
        """Waits before the next attempt on the same deployment, or says to move on."""
        if error.failure is not Failure.TRANSIENT or retry == self._policy.retries:
            return False
        if error.retry_after is not None and error.retry_after > self._policy.max_backoff_s:
            self._health.cool(deployment.key, error.retry_after)  # it told us when it will be back
            return False
        if self._health.cooling_until(deployment.key) is not None:
            return False
        wait = self._policy.backoff(retry, error.retry_after, self._rng)
        if wait >= run.remaining():
            return False
        run.wait(wait)
        return not (run.canceled or run.expired)

    def _attempt(self, deployment: Deployment, request: ImageRequest, run: Run) -> bytes:
        if run.canceled:
            raise GenerationCanceled()
        attempt = run.within(deployment.settings.timeout_s)
        with self._slots.slot(deployment.key, deployment.settings.concurrency, attempt) as got:
            if not got:
                raise (
                    GenerationCanceled()
                    if run.canceled
                    else errors.transient("timed out waiting for a free slot")
                )
            data = self._call(deployment, request, attempt)
        if run.canceled:
            raise GenerationCanceled()  # a result that arrives after the cancel does not count
        return checked_png(data, request.size, resize=deployment.settings.resize)

    def _call(self, deployment: Deployment, request: ImageRequest, attempt: Run) -> bytes:
        try:
            return self._engine_for(deployment).generate(request, attempt)
        except (EngineError, GenerationCanceled):
            raise
        except Exception as exc:  # a bug in an engine (maybe a third party's): this deployment is unusable
            log.exception("engine %s raised %s", deployment.engine, type(exc).__name__)
            raise errors.deployment(
                f"engine '{deployment.engine}' failed: internal error ({type(exc).__name__})"
            ) from exc

    def _outcome(self, failures: list[EngineError], run: Run) -> Exception:
        if run.canceled:
            return GenerationCanceled()
        if not failures:
            return errors.transient("timed out" if run.expired else "every deployment is cooling down")
        last = failures[-1]
        note = f" (after {len(failures)} attempts)" if len(failures) > 1 else ""
        if run.expired and last.failure is Failure.TRANSIENT:
            note = f" (timed out after {len(failures)} attempts)"
        return EngineError(last.message + note, last.failure, retry_after=last.retry_after)
