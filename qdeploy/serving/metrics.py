"""Prometheus metrics of one server: requests, latency, batch sizes, queue depth.

Each server owns a registry (not prometheus_client's global one), so several servers in one
process, as in tests, keep separate counts. The `model` label only ever takes the names of
loaded models: requests for unknown names count under "" so clients cannot grow the series.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qdeploy.serving.batcher import BatchObserver

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("qdeploy_requests", "Infer requests by model and HTTP status code.",
                                ["model", "code"], registry=self.registry)
        self.latency = Histogram("qdeploy_request_duration_seconds", "Infer request latency, arrival to response.",
                                 ["model"], buckets=_SECONDS, registry=self.registry)
        self.batch_size = Histogram("qdeploy_batch_size", "Rows per engine run (dynamic batching).",
                                    ["model"], buckets=_ROWS, registry=self.registry)
        self.compute = Histogram("qdeploy_inference_duration_seconds", "Engine time per batch.",
                                 ["model"], buckets=_SECONDS, registry=self.registry)
        self.queue_depth = Gauge("qdeploy_queue_depth", "Requests waiting for an engine instance.",
                                 ["model"], registry=self.registry)

    def batch_observer(self, model: str) -> BatchObserver:
        batch_size, compute = self.batch_size.labels(model), self.compute.labels(model)

        def observe(rows: int, seconds: float) -> None:
            batch_size.observe(rows)
            compute.observe(seconds)

        return observe

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time rather than on every change."""
        self.queue_depth.labels(model).set_function(depth)

    def record(self, model: str, code: int, seconds: float) -> None:
        self.requests.labels(model, str(code)).inc()
        self.latency.labels(model).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
