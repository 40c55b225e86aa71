"""Request and response shapes of the HTTP API (docs/api.md), as pydantic models for validation and OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.imaging.assessability import UnassessableReason
from models.metadata import ModelMetadata
from models.saliency import DEFAULT_METHOD

HeatmapMode = Literal["png", "none"]


class ErrorResponse(BaseModel):
    error: str = Field(description="Machine-readable error code, e.g. bad_image, too_large, overloaded.")
    detail: str = Field(description="A sentence for a person.")
    request_id: str | None = Field(None, description="Present when the request got an id; quote it in reports.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "bad_image",
                    "detail": "the PNG data is truncated",
                    "request_id": "5b0d8c0e3f0a4a52b1f7b0f6d1f0b8e2",
                }
            ]
        }
    )


class ModelRef(BaseModel):
    name: str
    version: str
    arch: str


class Point(BaseModel):
    x: int = Field(description="Column in original image pixels, 0-based.")
    y: int = Field(description="Row in original image pixels, 0-based.")


class ImageSize(BaseModel):
    width: int
    height: int


class Heatmap(BaseModel):
    method: str = Field(description="Saliency method id that produced the map.")
    width: int = Field(description="Model input grid width; the map stretches over the whole original image.")
    height: int = Field(description="Model input grid height.")
    png_base64: str = Field(description="Single-channel 8-bit PNG, min–max scaled, base64-encoded.")


class Timings(BaseModel):
    queue: float = Field(description="Milliseconds waiting in the model's batching queue.")
    compute: float = Field(description="Milliseconds of model compute for the batch this request was in.")
    total: float = Field(description="Milliseconds from request arrival to the answer.")


Decision = Literal["reacquire", "accept", "unassessable"]
# UnassessableReason (why an image could not be judged; null for reacquire and accept) is defined with the
# checks in models/imaging/assessability.py (docs/api.md, "Unassessable").


class FrameResult(BaseModel):
    """One frame of a multi-frame image or series; the top-level fields hold the series' decision."""

    index: int = Field(ge=0, description="0-based frame index in the instance (or the series, in order).")
    probability: float | None
    decision: Decision
    reason: UnassessableReason | None = None
    point: Point | None = None
    heatmap: Heatmap | None = None


class AssessResponse(BaseModel):
    request_id: str
    assessment_id: str = Field(
        description="Names this decision in the audit trail and for verdicts; equals request_id for one image."
    )
    model: ModelRef
    label: str | None = Field(
        description="Positive class name when reacquire, the negative one when accept, null when unassessable."
    )
    probability: float | None = Field(
        description="P(positive class), e.g. P(foreign object), calibrated when the model has a calibration; "
        "null when the model never ran (an unassessable image refused before it)."
    )
    threshold: float
    calibration: str | None = Field(None, description="Version of the calibration applied, or null.")
    decision: Decision = Field(
        description="reacquire iff probability >= threshold; unassessable when the gate cannot judge the image."
    )
    reason: UnassessableReason | None = Field(None, description="Why the image is unassessable; else null.")
    ood_score: float | None = Field(
        None, description="Out-of-distribution score of the image's features, when the model has the statistics."
    )
    point: Point | None = Field(description="Heatmap argmax in original image pixels; null with heatmap=none.")
    image: ImageSize
    heatmap: Heatmap | None = Field(description="Explanation of the positive class; null with heatmap=none.")
    frames: list[FrameResult] | None = Field(None, description="Per-frame results of a multi-frame image or series.")
    worst_frame: int | None = Field(None, description="Index of the frame that decided the series, or null.")
    timings_ms: Timings

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "request_id": "9f1c2a7d4e3b4c5d8e9f0a1b2c3d4e5f",
                    "assessment_id": "9f1c2a7d4e3b4c5d8e9f0a1b2c3d4e5f",
                    "model": {"name": "default", "version": "1.0.0", "arch": "resnet18"},
                    "label": "foreign_object",
                    "probability": 0.97,
                    "threshold": 0.5,
                    "calibration": None,
                    "decision": "reacquire",
                    "reason": None,
                    "ood_score": None,
                    "point": {"x": 812, "y": 433},
                    "image": {"width": 2048, "height": 2500},
                    "heatmap": {"method": DEFAULT_METHOD, "width": 320, "height": 320, "png_base64": "iVBORw0KGgo…"},
                    "frames": None,
                    "worst_frame": None,
                    "timings_ms": {"queue": 3.1, "compute": 41.0, "total": 52.7},
                }
            ]
        },
    )


class ModelInfo(ModelMetadata):
    """A loaded model: its whole ``model.json`` (docs/formats.md) plus where it runs."""

    device: str = Field(description="Torch device the model runs on, e.g. cpu or cuda:0.")
    state: str = Field(description="loading, warming_up, ready, or why not (failed: …, worker thread died).")
    default: bool = Field(description="True for the model /assess uses without ?model=.")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]


class MethodsResponse(BaseModel):
    default: str
    methods: list[str]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    models: dict[str, str] = Field(description="Model name → state.")


# -- the audit trail and radiographer verdicts (docs/api.md, "Audit trail and verdicts") -----------------------

VerdictName = Literal["agree", "reacquired_anyway", "accepted_anyway", "wrong_location"]


class VerdictRequest(BaseModel):
    """A radiographer's verdict on one decision."""

    model_config = ConfigDict(extra="forbid")

    verdict: VerdictName = Field(
        description="agree: the decision was right; reacquired_anyway: accepted by the gate but re-taken; "
        "accepted_anyway: the gate said re-acquire but the image was kept; wrong_location: the heatmap pointed at "
        "the wrong place."
    )
    note: str | None = Field(None, max_length=2000, description="Free text; no patient data.")


class VerdictEntry(BaseModel):
    verdict: VerdictName
    note: str | None
    time: datetime = Field(description="When it was recorded (UTC).")
    key_id: str | None = Field(description="Id of the API key that recorded it, or null.")


class VerdictResponse(BaseModel):
    assessment_id: str
    verdict: VerdictEntry = Field(description="The verdict just recorded; it now counts for this decision.")
    supersedes: VerdictEntry | None = Field(description="The verdict it replaces (kept in the history), or null.")


class AuditRecord(BaseModel):
    """One decision as the audit trail holds it: identifiers only, never names or other patient data."""

    time: datetime
    assessment_id: str
    request_id: str
    source: str = Field(description="Which door the image came in by: assess, stow, …")
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    model_name: str
    model_version: str
    weights_sha256: str | None
    method: str | None
    probability: float | None
    threshold: float
    calibration: str | None
    decision: str
    reason: str | None
    point_x: int | None
    point_y: int | None
    ood_score: float | None
    latency_ms: float
    key_id: str | None
    client: str | None
    verdict: VerdictEntry | None = Field(description="The current (newest) verdict, or null.")


class AuditRecordDetail(AuditRecord):
    verdicts: list[VerdictEntry] = Field(description="Every verdict given, oldest first.")


class AuditPage(BaseModel):
    records: list[AuditRecord] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")
