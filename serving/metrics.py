"""Prometheus metrics of one server: vispipe's own, and TF Serving's request metrics by TF Serving's names.

vispipe's metrics live in their own registry, so several servers can share a
process. TF Serving's `:tensorflow:serving:request_count` and
`:tensorflow:serving:request_latency` (microseconds, TF Serving's buckets) are
written in TF Serving's exposition format (util/prometheus_exporter.cc), so
dashboards built for TF Serving keep working.

```python
metrics = ServingMetrics()
metrics.observe_request("lenet", 1, "predict", "OK", 0.004, entrypoint="REST")
text = metrics.render()
```
"""

from __future__ import annotations

import bisect
import collections
import threading
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vispipe.serving.errors import http_status

__all__ = ["ServingMetrics", "CONTENT_TYPE_LATEST", "UNKNOWN_MODEL"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# util.cc: request_latency uses Buckets::Exponential(10, 1.8, 33), in microseconds.
_TF_LATENCY_LIMITS = tuple(10 * 1.8**i for i in range(32))
# The model label of requests for a model this server does not have: one series for them all, not
# one per name a client makes up (no model name can have parentheses; see validate_model_name).
UNKNOWN_MODEL = "(unknown)"
_TF_APIS = {"predict": "Predict", "classify": "Classify", "regress": "Regress", "multi_inference": "MultiInference"}


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)


class _TfServingRequests:
    """TF Serving's request count and latency metrics, rendered in its own text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()
        self._latency: dict[tuple, list] = {}

    def observe(self, model: str, api: str, entrypoint: str, code: str, seconds: float) -> None:
        micros = seconds * 1e6
        with self._lock:
            self._counts[(("model_name", model), ("status", code))] += 1
            key = (("model_name", model), ("API", api), ("entrypoint", entrypoint), ("status", code))
            buckets = self._latency.setdefault(key, [[0] * (len(_TF_LATENCY_LIMITS) + 1), 0.0])
            index = bisect.bisect_right(_TF_LATENCY_LIMITS, micros)
            buckets[0][index] += 1
            buckets[1] += micros

    def render(self) -> str:
        with self._lock:
            counts = dict(self._counts)
            latency = {k: ([*v[0]], v[1]) for k, v in self._latency.items()}
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        lines += [f":tensorflow:serving:request_count{{{_labels(k)}}} {v}" for k, v in sorted(counts.items())]
        lines.append("# TYPE :tensorflow:serving:request_latency histogram")
        for key, (buckets, total) in sorted(latency.items()):
            cumulative = 0
            for i, count in enumerate(buckets):
                cumulative += count
                limit = "%.6g" % _TF_LATENCY_LIMITS[i] if i < len(_TF_LATENCY_LIMITS) else "+Inf"
                lines.append(f':tensorflow:serving:request_latency_bucket{{{_labels(key)},le="{limit}"}} {cumulative}')
            lines.append(f":tensorflow:serving:request_latency_sum{{{_labels(key)}}} {total:g}")
            lines.append(f":tensorflow:serving:request_latency_count{{{_labels(key)}}} {cumulative}")
        return "\n".join(lines) + "\n"


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
        self._tf_serving = _TfServingRequests()
        self._series: dict[tuple, tuple] = {}  # observe_request's key -> its (count, latency) series
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

    def observe_request(
        self, model: str, version: int | str, api: str, code: str, seconds: float, entrypoint: str = "REST"
    ) -> None:
        """Counts one answered request and records its latency.

        Args:
            model: the model name asked for (counted as UNKNOWN_MODEL when no such model is configured).
            version: the version that answered ("none" if none did).
            api: "predict", "classify", "regress", "multi_inference", "metadata", ...
            code: the status code name ("OK", "INVALID_ARGUMENT", ...).
            seconds: time to answer.
            entrypoint: "REST" or "GRPC".
        """
        if version == "none" and model not in self._loaded():
            model = UNKNOWN_MODEL
        key = (model, version, api, code, entrypoint)
        series = self._series.get(key)
        if series is None:  # labels() per request cost as much as the rest of this
            status = 200 if code == "OK" else http_status(code)
            labels = (model, str(version), api if entrypoint == "REST" else f"grpc_{api}", str(status))
            series = self._series[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        series[0].inc()
        series[1].observe(seconds)
        if api in _TF_APIS:
            self._tf_serving.observe(model, _TF_APIS[api], entrypoint, code, seconds)

    def observe_batch(self, model: str, version: int, signature: str, size: int) -> None:
        """Records the size of one batch run."""
        self.batch_size.labels(model, str(version), signature).observe(size)

    def render(self) -> bytes:
        """The exposition text (refreshes the gauges first)."""
        self.queue_depth.clear()
        for (model, version), depth in self._queue_depths().items():
            self.queue_depth.labels(model, str(version)).set(depth)
        self.version_loaded.clear()
        self.loaded_versions.clear()
        for model, versions in self._loaded().items():
            self.loaded_versions.labels(model).set(len(versions))
            for version in versions:
                self.version_loaded.labels(model, str(version)).set(1)
        return generate_latest(self.registry) + self._tf_serving.render().encode()
