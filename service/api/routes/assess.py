"""POST /assess — one radiograph in, decision + explanation out (docs/api.md, "POST /assess")."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from models.saliency import DEFAULT_METHOD
from service.api.deps import AssessCaller, AssessorDep, SettingsDep
from service.api.upload import read_upload, wait_for_disconnect
from service.schemas import AssessResponse, ErrorResponse, HeatmapMode
from service.serving.assessment import AssessParams

router = APIRouter(tags=["assess"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {
    "required": True,
    "description": "The radiograph: raw bytes with its media type, or multipart/form-data with one field 'file'.",
    "content": {
        "application/dicom": _BINARY,
        "image/png": _BINARY,
        "image/jpeg": _BINARY,
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
    },
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "bad_image: undecodable, empty or truncated image",
        401: "unauthorized: missing or wrong API key",
        403: "forbidden: the API key lacks the 'assess' scope",
        413: "too_large: body or pixel count over the limits",
        415: "unsupported_media_type: content type or DICOM transfer syntax with no decoder",
        422: "bad_parameter: unknown model or method, bad heatmap value, multi-frame DICOM",
        500: "internal: the model failed on this request's batch",
        503: "overloaded (queue full, see Retry-After) or not_ready",
        504: "timeout: the deadline passed while queued",
    }
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}


@router.post(
    "/assess",
    response_model=AssessResponse,
    summary="Assess one radiograph",
    description=(
        "Classifies the image (P(positive class), e.g. P(foreign object)), decides `reacquire` when the "
        "probability reaches the model's threshold and `accept` otherwise, and explains the **positive class** "
        "with a saliency map — also when the decision is `accept`, so the radiographer always sees where the "
        "model would look for the object. `point` is the map's maximum in original image pixels; the heatmap "
        "PNG is at the model grid and stretches over the whole image. `heatmap=none` skips the explanation "
        "(forward pass only) and returns `heatmap` and `point` as null."
    ),
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses=_errors(400, 401, 403, 413, 415, 422, 500, 503, 504),
)
async def assess(
    request: Request,
    assessor: AssessorDep,
    settings: SettingsDep,
    caller: AssessCaller,
    model: Annotated[str | None, Query(description="Model name from GET /models; default: the default model.")] = None,
    method: Annotated[str, Query(description="Saliency method id from GET /methods.")] = DEFAULT_METHOD,
    heatmap: Annotated[HeatmapMode, Query(description="png: explain; none: forward pass only.")] = "png",
) -> AssessResponse:
    arrived = time.monotonic()
    params = AssessParams(
        model=model,
        method=method,
        heatmap=heatmap,
        key_id=caller.key_id,
        client=request.client.host if request.client else None,
    )
    worker = assessor.check(params)
    upload = await read_upload(request, settings.max_body_bytes)
    disconnected = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        return await assessor.assess(upload, params, worker, request.state.request_id, arrived, disconnected)
    finally:
        disconnected.cancel()
