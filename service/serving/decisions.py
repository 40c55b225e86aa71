"""Every decision the gate makes, as one record handed to whoever listens (the audit trail, metrics).

The assessment pipeline builds a :class:`DecisionRecord` for each decision it answers (one image, each STOW
instance, each series) and calls every listener on the event loop, after the answer is final. Listeners must not
block: the audit trail buffers and writes behind (docs/operations.md, "Audit and calibration"). A listener that
raises is logged and skipped; it never changes the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger("normgate.decisions")


@dataclass(frozen=True)
class DecisionRecord:
    """What an audit record holds: identifiers, never names or other patient data."""

    time: datetime  # UTC, when the answer was made
    assessment_id: str
    request_id: str
    source: str  # "assess", "stow", "dimse", … : which door the image came in by
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    model_name: str
    model_version: str
    weights_sha256: str | None
    method: str | None  # saliency method; None when no heatmap was asked for
    probability: float | None
    threshold: float
    calibration: str | None
    decision: str
    reason: str | None
    point_x: int | None
    point_y: int | None
    ood_score: float | None
    latency_ms: float
    key_id: str | None  # the API key's id, never the key
    client: str | None  # the client's address


DecisionListener = Callable[[DecisionRecord], None]


def notify(listeners: list[DecisionListener], record: DecisionRecord) -> None:
    for listener in listeners:
        try:
            listener(record)
        except Exception:
            log.exception("decision listener %r failed for assessment %s", listener, record.assessment_id)
