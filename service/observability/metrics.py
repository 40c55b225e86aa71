"""Prometheus metrics (docs/api.md, "Health, readiness, metrics"), on a registry owned by one app instance.

A per-app ``CollectorRegistry`` (not the global default) lets several apps live in one process — the test suite
builds many — without "Duplicated timeseries" errors, and ``/metrics`` shows exactly this app's numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import get_args

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from models.imaging.assessability import UnassessableReason

__all__ = ["CONTENT_TYPE_LATEST", "PUSH_CHANNELS", "PUSH_OUTCOMES", "REJECTION_REASONS", "ServiceMetrics"]

# Every label value a labelled counter can take is exported as 0 from the start: rate()/increase() only see a
# series' first increment when an earlier sample exists (docs/operations.md, "Alerts").
# normgate_rejected_total{reason}: the API's error codes (docs/api.md, "Errors") plus STOW's study_mismatch.
REJECTION_REASONS = (
    "bad_image",
    "bad_parameter",
    "too_large",
    "unsupported_media_type",
    "unauthorized",
    "request_timeout",
    "not_acceptable",
    "study_mismatch",
    "overloaded",
    "not_ready",
    "timeout",
    "internal",
    "client_disconnected",
)
PUSH_CHANNELS = ("dicomweb", "dimse")  # result delivery: STOW-RS push, C-STORE to the DIMSE destination
PUSH_OUTCOMES = ("pushed", "partial", "failed", "expired", "dropped")

# Latency buckets from 5 ms (a cached small model) to 30 s (a large image on a busy CPU).
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
# P(positive class) in steps of 0.05: fine enough to see a drifting distribution and the share above a threshold.
_PROBABILITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


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
        # Result delivery through the durable outbox (service/dicomweb/outbox.py).
        self.push_outcomes = Counter(
            "normgate_dicomweb_push_total",
            "Result sets (SC, SEG, SR of one image) leaving the outbox, by channel and final outcome: pushed, "
            "partial (some instances refused), failed (refused, not retried), expired (older than the max age), "
            "dropped (outbox full).",
            ["channel", "outcome"],
            registry=r,
        )
        self.push_retries = Counter(
            "normgate_dicomweb_push_retries_total",
            "Delivery attempts that failed and will be retried (archive down, timeout, 5xx, 429).",
            ["channel"],
            registry=r,
        )
        self.push_queue_depth = Gauge(
            "normgate_dicomweb_push_queue_depth", "Result sets pending in the outbox.", ["channel"], registry=r
        )
        self.push_oldest_age = Gauge(
            "normgate_dicomweb_push_oldest_age_seconds",
            "Age of the oldest result set pending in the outbox (0 when none).",
            ["channel"],
            registry=r,
        )
        self.probability = Histogram(
            "normgate_probability",
            "P(positive class) of each decision that has one (calibrated when the model is), by model: the "
            "distribution drift panels watch.",
            ["model"],
            buckets=_PROBABILITY_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            "normgate_verdicts_total",
            "Radiographer verdicts recorded (agree, reacquired_anyway, accepted_anyway, wrong_location), by model.",
            ["model", "verdict"],
            registry=r,
        )
        self.audit_spool_depth = Gauge(
            "normgate_audit_spool_depth",
            "Audit records waiting in the spool file for the database (0 while it is reachable and caught up).",
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        for channel in PUSH_CHANNELS:
            for outcome in PUSH_OUTCOMES:
                self.push_outcomes.labels(channel, outcome)
            self.push_retries.labels(channel)
            self.push_queue_depth.labels(channel).set(0)
            self.push_oldest_age.labels(channel).set(0)

    def preinitialise_models(self, names: Iterable[str]) -> None:
        """Export 0 for every model-labelled counter of each model (called once the models are known)."""
        for name in names:
            for decision in ("reacquire", "accept"):
                self.decisions.labels(name, decision, "none")
            for reason in get_args(UnassessableReason):
                self.decisions.labels(name, "unassessable", reason)
            self.worker_restarts.labels(name)
            self.out_of_memory.labels(name)

    def watch_push_backlog(self, channel: str, depth: Callable[[], float], oldest_age: Callable[[], float]) -> None:
        """The outbox gauges of ``channel`` read the sender's numbers at each scrape."""
        self.push_queue_depth.labels(channel).set_function(depth)
        self.push_oldest_age.labels(channel).set_function(oldest_age)

    def render(self) -> bytes:
        return generate_latest(self.registry)
