"""Prometheus metrics of one server (its own registry, so several servers can live in a process).

```python
metrics = ServingMetrics()
metrics.observe_request("lenet", 1, "predict", 200, 0.004)
text = metrics.render()
```
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServingMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    """Requests, latencies, batch sizes, queue depth and loaded versions.

    Args:
        queue_depths: returns (model, version) -> queued rows; read at scrape time.
        loaded: returns model -> loaded versions; read at scrape time.
    """

    def __init__(
        self,
        queue_depths: Callable[[], dict[tuple[str, int], int]] = dict,
        loaded: Callable[[], dict[str, list[int]]] = dict,
    ):
        self.registry = CollectorRegistry()
        self._queue_depths = queue_depths
        self._loaded = loaded
        self.requests = Counter(
            "vispipe_serving_requests",
            "Requests answered, by model, version, API and HTTP status.",
            ["model", "version", "api", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vispipe_serving_request_latency_seconds",
            "Request latency, by model, version, API and HTTP status.",
            ["model", "version", "api", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "vispipe_serving_batch_size",
            "Rows per signature call made by the batcher.",
            ["model", "version", "signature"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "vispipe_serving_queue_depth", "Rows waiting to be batched.", ["model", "version"], registry=self.registry
        )
        self.loaded_versions = Gauge(
            "vispipe_serving_loaded_versions", "Versions loaded and serving.", ["model"], registry=self.registry
        )
        self.version_loaded = Gauge(
            "vispipe_serving_model_version_loaded",
            "1 for each loaded (model, version).",
            ["model", "version"],
            registry=self.registry,
        )

    def observe_request(self, model: str, version: int | str, api: str, status: int, seconds: float) -> None:
        """Counts one answered request and records its latency."""
        labels = (model, str(version), api, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_batch(self, model: str, version: int, signature: str, size: int) -> None:
        """Records the size of one batch run."""
        self.batch_size.labels(model, str(version), signature).observe(size)

    def render(self) -> bytes:
        """The exposition text (refreshes the gauges first)."""
        self.queue_depth.clear()
        for (model, version), depth in self._queue_depths().items():
            self.queue_depth.labels(model, str(version)).set(depth)
        self.version_loaded.clear()
        for model, versions in self._loaded().items():
            self.loaded_versions.labels(model).set(len(versions))
            for version in versions:
                self.version_loaded.labels(model, str(version)).set(1)
        return generate_latest(self.registry)
