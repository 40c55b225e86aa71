"""Prometheus metrics (docs/api.md, "Health, readiness, metrics"), on a registry owned by one app instance.

A per-app ``CollectorRegistry`` (not the global default) lets several apps live in one process — the test suite
builds many — without "Duplicated timeseries" errors, and ``/metrics`` shows exactly this app's numbers.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

# Latency buckets from 5 ms (a cached small model) to 30 s (a large image on a busy CPU).
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "normgate_request_duration_seconds",
            "HTTP request latency, arrival to last byte.",
            ["endpoint", "status"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "normgate_queue_wait_seconds",
            "Time a request waited in its model's batching queue.",
            ["model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "normgate_compute_duration_seconds",
            "Time spent per stage: decode (per image), forward_backward (per batch), saliency and encode (per image).",
            ["model", "stage"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "normgate_batch_size",
            "Requests per batch handed to a model.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "normgate_queue_depth", "Requests waiting in a model's batching queue.", ["model"], registry=r
        )
        self.rejected = Counter(
            "normgate_rejected_total",
            "Submitted work (POST /assess, …) answered with an error, by error code.",
            ["reason"],
            registry=r,
        )
        self.decisions = Counter(
            "normgate_decisions_total",
            "Decisions answered, by model, decision (reacquire, accept, unassessable) and reason ('none' unless "
            "unassessable).",
            ["model", "decision", "reason"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "normgate_worker_restarts_total",
            "Model worker threads that died and were started again.",
            ["model"],
            registry=r,
        )
        self.out_of_memory = Counter(
            "normgate_out_of_memory_total",
            "Batches that ran out of memory (each is split and retried; a single image out of memory is answered 503).",
            ["model"],
            registry=r,
        )
        self.decode_in_flight = Gauge(
            "normgate_decode_in_flight",
            "Uploads being decoded or waiting for a decode process, by lane (ordinary, large).",
            ["lane"],
            registry=r,
        )
        self.decode_abandoned = Counter(
            "normgate_decode_abandoned_total",
            "Decodes stopped (their process killed) because the request's deadline passed or its client left.",
            ["lane", "reason"],
            registry=r,
        )
        self.auth_enabled = Gauge(
            "normgate_auth_enabled",
            "1 when API keys are configured (NORMGATE_API_KEYS), 0 when every endpoint is open to anyone.",
            registry=r,
        )
        self.model_info = Gauge(
            "normgate_model_info", "Loaded models (value 1).", ["name", "version", "arch"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
