"""Canned /metrics text in the service's shape, for the tests of the driver's and the runner's parsing."""

from __future__ import annotations


def scrape_text(batches: list[int], queue_s: float, decode_s: float, rejected: int) -> str:
    """A /metrics text with the names service/observability/metrics.py exports, after the given batches."""
    n = len(batches)
    return f"""# HELP normgate_batch_size Requests per batch handed to a model.
# TYPE normgate_batch_size histogram
normgate_batch_size_bucket{{le="1.0",model="default"}} {sum(1 for b in batches if b <= 1)}.0
normgate_batch_size_bucket{{le="+Inf",model="default"}} {n}.0
normgate_batch_size_count{{model="default"}} {n}.0
normgate_batch_size_sum{{model="default"}} {sum(batches)}.0
# HELP normgate_queue_wait_seconds Time a request waited in its model's batching queue.
# TYPE normgate_queue_wait_seconds histogram
normgate_queue_wait_seconds_bucket{{le="+Inf",model="default"}} {sum(batches)}.0
normgate_queue_wait_seconds_count{{model="default"}} {sum(batches)}.0
normgate_queue_wait_seconds_sum{{model="default"}} {queue_s}
# HELP normgate_compute_duration_seconds Time spent per stage.
# TYPE normgate_compute_duration_seconds histogram
normgate_compute_duration_seconds_bucket{{le="+Inf",model="default",stage="decode"}} {sum(batches)}.0
normgate_compute_duration_seconds_count{{model="default",stage="decode"}} {sum(batches)}.0
normgate_compute_duration_seconds_sum{{model="default",stage="decode"}} {decode_s}
# HELP normgate_request_duration_seconds Time from request received to response sent.
# TYPE normgate_request_duration_seconds histogram
normgate_request_duration_seconds_bucket{{le="+Inf",route="/assess"}} {sum(batches)}.0
normgate_request_duration_seconds_count{{route="/assess"}} {sum(batches)}.0
normgate_request_duration_seconds_sum{{route="/assess"}} {5 * queue_s}
# HELP normgate_rejected_total Submitted work answered with an error, by error code.
# TYPE normgate_rejected_total counter
normgate_rejected_total{{reason="overloaded"}} {rejected}.0
normgate_rejected_total{{reason="unsupported_media_type"}} 0.0
"""


BEFORE = scrape_text([1, 1], queue_s=0.0, decode_s=0.2, rejected=0)  # the two warm-up batches
AFTER = scrape_text([1, 1, 4, 3, 2], queue_s=0.9, decode_s=1.1, rejected=1)
