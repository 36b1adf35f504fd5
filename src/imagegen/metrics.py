"""What `/metrics` shows, in the Prometheus format: the process's counters and histograms, and the
queues, read from storage when scraped.

Several processes, one answer: `imagegen serve` gives its API processes one directory of
prometheus-client's multiprocess files (`PROMETHEUS_MULTIPROC_DIR`: a new one under the system's
temporary folder, made before the processes start and removed when `serve` ends), and `/metrics`
sums every file in it, whichever process answers the scrape. A process that died leaves its
counts there, so the sums never go back. A `worker` or `scheduler` process runs apart (another
`serve`, often another machine): it answers its own scrape on `IMAGEGEN_METRICS_PORT`
(background/metrics_server.py), the way Prometheus scrapes every target and sums in its queries.

Cost: the create route is the hot path, so what a request does here is a dict lookup for its
(route, method, status) children, made once per combination, one counter increment and one
histogram observation; no label tuple is built per request beyond that key.

prometheus-client picks its storage when it is first imported, from the environment: the CLI sets
`PROMETHEUS_MULTIPROC_DIR` before anything imports this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAMESPACE = "imagegen"
# Seconds. The create route answers in ~0.1-10 ms; a Prefer: wait create in seconds.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _Metrics:
    """Every metric of the process, made at its first use: prometheus-client chooses where values
    live (memory, or the multiprocess files) when it is imported, so it is imported only then."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series: a start time per child, noise here
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ns = NAMESPACE
        self.http_requests = Counter(
            "http_requests", "HTTP requests answered, by route template, method and status",
            ("route", "method", "status"), namespace=ns, registry=registry,
        )  # fmt: skip
        self.http_duration = Histogram(
            "http_request_duration_seconds", "Time from a request's start to its answer's last byte",
            ("route", "method"), namespace=ns, registry=registry, buckets=HTTP_BUCKETS,
        )  # fmt: skip
        self.created = Counter(
            "generations_created", "Generation requests created (debited and queued), by model",
            ("model",), namespace=ns, registry=registry,
        )  # fmt: skip
        self.finished = Counter(
            "generations_finished", "Generation requests that reached an end, by model and status "
            "(completed, failed, canceled)", ("model", "status"), namespace=ns, registry=registry,
        )  # fmt: skip
        self.job_duration = Histogram(
            "job_duration_seconds", "A job's run, from its claim to its end, by model and outcome",
            ("model", "outcome"), namespace=ns, registry=registry, buckets=JOB_BUCKETS,
        )  # fmt: skip
        self.credits = Counter(
            "credits", "Credits moved by generations: debited by creates, refunded (failed, canceled)",
            ("movement",), namespace=ns, registry=registry,
        )  # fmt: skip
        self.webhooks = Counter(
            "webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retry, gave_up)",
            ("outcome",), namespace=ns, registry=registry,
        )  # fmt: skip
        self.storage_errors = Counter(
            "storage_errors", "Storage calls that failed (unavailable, or a conflict left after "
            "retries), by kind", ("kind",), namespace=ns, registry=registry,
        )  # fmt: skip


_made: _Metrics | None = None
_enabled = True
_created: dict[str, Any] = {}  # the create path's children by model, made once


def enable(on: bool) -> None:
    """IMAGEGEN_METRICS: off, the events below count nothing (and /metrics is not served)."""
    global _enabled
    _enabled = on


def _metrics() -> _Metrics:
    global _made
    if _made is None:
        _made = _Metrics()
    return _made


class HttpMetrics:
    """The per-request half, kept cheap: each (route, method, status)'s children made once."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            made = _metrics()
            children = self._children[key] = (
                made.http_requests.labels(route, method, str(status)),
                made.http_duration.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)


# -- the events the service's edges and the background work report ----------------------------------
def generation_created(model: str, cost: int) -> None:
    if not _enabled:
        return
    children = _created.get(model)
    if children is None:
        made = _metrics()
        children = _created[model] = (made.created.labels(model), made.credits.labels("debited"))
    children[0].inc()
    children[1].inc(cost)


def generation_finished(model: str, status: str, refunded: int = 0) -> None:
    if not _enabled:
        return
    made = _metrics()
    made.finished.labels(model, status).inc()
    if refunded:
        made.credits.labels("refunded").inc(refunded)


def job_ran(model: str, outcome: str, seconds: float) -> None:
    if _enabled:
        _metrics().job_duration.labels(model, outcome).observe(seconds)


def webhook_attempt(outcome: str) -> None:
    if _enabled:
        _metrics().webhooks.labels(outcome).inc()


def storage_error(kind: str) -> None:
    if _enabled:
        _metrics().storage_errors.labels(kind).inc()


# -- a scrape -----------------------------------------------------------------------------------------
def render(queues: Iterable[tuple[str, int, float | None]] = ()) -> bytes:
    """Every process's counts (one process's, outside `serve`), and the queues per model:
    (model, pending jobs, seconds the oldest has waited or None), read by the caller just now."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    made = _metrics()
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
        text = generate_latest(registry)
    else:
        text = generate_latest(made.registry)
    return text + generate_latest(_QueueCollector(list(queues)))  # type: ignore[arg-type]


class _QueueCollector:
    """Gauges of one scrape, from storage: true whichever process is scraped."""

    def __init__(self, queues: list[tuple[str, int, float | None]]) -> None:
        self.queues = queues

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily(
            f"{NAMESPACE}_queue_depth", "Generation requests pending, by model", labels=["model"]
        )
        age = GaugeMetricFamily(
            f"{NAMESPACE}_queue_oldest_pending_seconds",
            "How long the oldest pending request of each model has waited (0: none pending)",
            labels=["model"],
        )
        for model, pending, oldest in self.queues:
            depth.add_metric([model], pending)
            age.add_metric([model], oldest or 0.0)
        yield depth
        yield age


# -- the multiprocess directory -----------------------------------------------------------------------
def make_multiprocess_dir() -> Path | None:
    """A new directory for this `serve`'s processes, put in the environment they inherit; None if
    the operator named one (theirs to keep and clean: prometheus-client's own convention)."""
    if os.environ.get(MULTIPROC_ENV):
        return None
    path = Path(tempfile.mkdtemp(prefix="imagegen-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == str(path):
            del os.environ[MULTIPROC_ENV]
