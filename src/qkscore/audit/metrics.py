"""Prometheus metrics of the service (``GET /metrics``, prometheus-client's text format).

* ``qkscore_requests_total{route, method, status}``: answered requests; ``route`` is the route's
  path template (``/v1/check``), ``unmatched`` for paths no route serves, so a scan of random
  paths cannot grow the label set;
* ``qkscore_request_duration_seconds{route}``: a latency histogram;
* ``qkscore_queue_length``: requests waiting for the model (the one running not counted);
* ``qkscore_verdicts_total{kind, verdict}``: logged decisions (check / chain, valid / invalid);
* ``qkscore_model_load_seconds``: how long loading the model took at start-up;
* ``qkscore_batch_size``: a histogram of how many requests each pass of the model judged
  together (``_count`` is the number of passes, ``_sum`` the requests they judged).

Each app gets its own registry (tests build many apps in one process). Under ``serve
--workers N`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR``: every worker then writes its values to
files there and ``/metrics`` answers for all workers together (counters and the histogram
summed, the queue summed over live workers, the load time the slowest worker's).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "ServiceMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "qkscore_requests",
            "Answered HTTP requests by route, method and status.",
            ("route", "method", "status"),
            registry=reg,
        )
        self.latency = Histogram(
            "qkscore_request_duration_seconds",
            "Request latency by route (queueing and model time included).",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue = Gauge(
            "qkscore_queue_length",
            "Requests waiting for the model (the running one not counted).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.verdicts = Counter(
            "qkscore_verdicts",
            "Logged decisions by kind (check, chain) and verdict (valid, invalid).",
            ("kind", "verdict"),
            registry=reg,
        )
        self.batch_size = Histogram(
            "qkscore_batch_size",
            "Requests judged together in one pass of the model.",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.model_load = Gauge(
            "qkscore_model_load_seconds",
            "Seconds the model took to load at start-up.",
            registry=reg,
            multiprocess_mode="max",
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry: Any = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
