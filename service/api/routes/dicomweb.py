"""DICOMweb: STOW-RS ``POST /dicomweb/studies[/{study}]`` in, WADO-RS retrieval of NormGate's result instances.

Response format of the store (docs/integration.md):

* ``Accept: application/dicom+json`` (the default, also for ``*/*`` or no Accept): the pure Store Instances
  Response (PS3.18 Table 10.5.3-1) in DICOM JSON; NormGate's findings travel as DICOM (the SR and the SC).
* ``Accept: application/json``: ``{"stow": <that same DICOM JSON>, "results": [one object per part],
  "series": [one object per series the request completed]}`` with each instance's /assess answer, its result
  instances (UIDs, WADO-RS URL) and the push state; a series object has the series' decision (an /assess
  answer with ``frames``), its frames' SOP Instance UIDs in order and its SR (service/dicomweb/series.py).

Status 200 / 202 / 409 per PS3.18 §10.5.3 (all / some / none assessed); request-level problems (content
type, malformed multipart, too many parts, unknown model, not ready, API key) are the API's JSON errors
(docs/api.md, "Errors").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from models.saliency import DEFAULT_METHOD
from service.api.deps import AssessCaller, SettingsDep
from service.api.upload import read_limited_body, wait_for_disconnect
from service.config import Settings
from service.db.results import StoreResults
from service.dicomweb.dimse import DimseListener, DimseStore, parse_destination
from service.dicomweb.multipart import (
    DICOM_JSON,
    DICOM_MEDIA_TYPE,
    StowOutcome,
    build_multipart_related,
    parse_multipart_related,
    store_instances_response,
    stow_boundary,
    stow_status,
)
from service.dicomweb.outbox import Deliver, OutboxSender, open_outbox
from service.dicomweb.push import DicomwebPush
from service.dicomweb.stow import ResultStore, StowService
from service.errors import ApiError
from service.observability.phi_logging import install_dicom_log_redaction
from service.schemas import ErrorResponse
from service.serving.assessment import AssessParams

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

MIB = 1024 * 1024
_UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


class NotAcceptable(ApiError):
    status, code = 406, "not_acceptable"


class ResultNotFound(ApiError):
    status, code = 404, "not_found"


# -- lifecycle: called from the app's lifespan -------------------------------------------------------------


async def start_dicomweb(app: FastAPI, settings: Settings) -> None:
    """The result store; the outbox and a sender per configured destination (NORMGATE_DICOMWEB_PUSH_URL: STOW-RS,
    NORMGATE_DIMSE_RESULT_DESTINATION: C-STORE); the STOW service; the DIMSE listener (NORMGATE_DIMSE_PORT)."""
    install_dicom_log_redaction()  # pydicom quotes element values (birth dates, names) in its warnings
    senders: list[OutboxSender] = []
    deliveries: list[tuple[str, Deliver]] = []
    if settings.dicomweb_push_url:
        authorization = settings.dicomweb_push_authorization
        push = DicomwebPush(
            settings.dicomweb_push_url,
            timeout_s=settings.dicomweb_push_timeout_s,
            authorization=authorization.get_secret_value() if authorization else None,
        )
        await push.start()
        app.state.dicomweb_push = push
        deliveries.append(("dicomweb", push.deliver))
    if settings.dimse_result_destination:
        store = DimseStore(
            parse_destination(settings.dimse_result_destination),
            settings.dimse_ae_title,
            timeout_s=settings.dicomweb_push_timeout_s,
        )
        deliveries.append(("dimse", store.deliver))
    if deliveries:
        outbox = open_outbox(settings)
        for channel, deliver in deliveries:
            sender = OutboxSender(
                outbox,
                channel,
                deliver,
                app.state.metrics,
                backoff_s=settings.dicomweb_push_backoff_s,
                backoff_max_s=settings.dicomweb_push_backoff_max_s,
                max_age_s=settings.dicomweb_push_max_age_s,
            )
            await sender.start()
            senders.append(sender)
    app.state.result_senders = senders
    database = getattr(app.state, "store", None)
    keep = settings.dicomweb_result_retention_hours > 0
    shared = StoreResults(database) if database is not None and keep else None
    stow = StowService(
        app.state.assessor,
        ResultStore(int(settings.dicomweb_result_cache_mb * MIB), shared),
        senders,
        app.version,
        app.state.metrics,
        series_settle_s=settings.series_settle_s,
    )
    app.state.stow = stow
    app.state.dimse_listener = None
    if settings.dimse_port is not None:
        listener = DimseListener(
            stow,
            host=settings.host,
            port=settings.dimse_port,
            ae_title=settings.dimse_ae_title,
            allowed_aes=settings.dimse_allowed_aes,
            timeout_s=settings.request_timeout_ms / 1000 + 30,
        )
        listener.start(asyncio.get_running_loop())
        app.state.dimse_listener = listener


async def stop_dicomweb(app: FastAPI, timeout_s: float = 5.0) -> None:
    stow: StowService | None = getattr(app.state, "stow", None)
    if stow is not None:
        stow.series.close()
        try:
            await asyncio.wait_for(stow.results.drain(), timeout_s)
        except TimeoutError:
            pass  # the store is hanging; those results stay in this process's memory only
    listener: DimseListener | None = getattr(app.state, "dimse_listener", None)
    if listener is not None:
        await asyncio.to_thread(listener.stop)
    senders: list[OutboxSender] = getattr(app.state, "result_senders", [])
    await asyncio.gather(*(sender.stop(timeout_s) for sender in senders))  # at most timeout_s in all
    if senders:
        senders[0].outbox.close()  # one outbox file for every channel
    push: DicomwebPush | None = getattr(app.state, "dicomweb_push", None)
    if push is not None:
        await push.aclose()


def _stow_service(request: Request) -> StowService:
    service: StowService | None = getattr(request.app.state, "stow", None)
    if service is None:  # an app built without its lifespan
        raise ApiError("the DICOMweb service is not started")
    return service


# -- content negotiation -----------------------------------------------------------------------------------


def _wants_json_wrapper(accept: str | None) -> bool:
    """True for ``application/json`` without ``application/dicom+json``; 406 when nothing offered fits."""
    if not accept:
        return False
    types = [piece.split(";", 1)[0].strip().lower() for piece in accept.split(",") if piece.strip()]
    if DICOM_JSON in types or "*/*" in types or "application/*" in types:
        return False
    if "application/json" in types:
        return True
    raise NotAcceptable(
        f"the store response is {DICOM_JSON} (or application/json with NormGate's results); "
        f"Accept offers only {accept!r}"
    )


# -- routes ------------------------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in {
        400: "bad_image: malformed multipart/related body",
        401: "unauthorized",
        403: "forbidden: the API key lacks the 'assess' scope",
        406: "not_acceptable",
        413: "too_large: body over NORMGATE_MAX_BODY_MB or more parts than NORMGATE_DICOMWEB_MAX_INSTANCES",
        415: 'unsupported_media_type: not multipart/related; type="application/dicom"',
        422: "bad_parameter: unknown model or method",
        503: "not_ready",
    }.items()
}
_STORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Every instance assessed; Store Instances Response (DICOM JSON).",
        "content": {DICOM_JSON: {}, "application/json": {}},
    },
    202: {
        "description": "Some instances failed (Failed SOP Sequence with Failure Reasons).",
        "content": {DICOM_JSON: {}},
    },
    409: {"description": "Every instance failed.", "content": {DICOM_JSON: {}}},
    **_ERRORS,
}
_STORE_BODY = {
    "required": True,
    "description": "One DICOM Part 10 instance per part.",
    "content": {'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}},
}
_STORE_DESCRIPTION = (
    "DICOMweb STOW-RS (PS3.18 §10.5). Every instance is assessed exactly like `POST /assess` with a heatmap "
    "(batched with other requests), and gets a Secondary Capture (heatmap overlay, decision burned in) and a "
    "Comprehensive SR (decision, probability, threshold, model, saliency peak as SCOORD). Those are pushed to "
    "NORMGATE_DICOMWEB_PUSH_URL when set and can be retrieved with WADO-RS from here for a while. "
    "Failure Reasons: 0xA700 out of resources, 0xA900 study UID mismatch or missing UIDs, 0xC000 not a "
    "decodable image, 0x0122 not an image SOP Class, 0x0110 processing failure."
)

ModelQuery = Annotated[str | None, Query(description="Model name from GET /models; default: the default model.")]
MethodQuery = Annotated[str, Query(description="Saliency method id from GET /methods.")]


async def _store(
    request: Request, settings: Settings, study_uid: str | None, model: str | None, method: str, key_id: str | None
) -> Response:
    arrived = time.monotonic()
    boundary = stow_boundary(request.headers.get("content-type"))
    wrapper = _wants_json_wrapper(request.headers.get("accept"))
    service = _stow_service(request)
    params = AssessParams(
        model=model,
        method=method,
        heatmap="png",
        source="stow",
        key_id=key_id,
        client=request.client.host if request.client else None,
    )
    service.assessor.check(params)  # unknown model/method or not ready: refuse before reading the body
    body = await read_limited_body(request, settings.max_body_bytes)
    parts = parse_multipart_related(body, boundary, settings.dicomweb_max_instances)
    del body  # the parts hold their own copies
    request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    disconnected = asyncio.ensure_future(wait_for_disconnect(request))
    series: list[dict[str, Any]] = []
    try:
        outcomes = await service.store(
            parts,
            study_uid,
            params,
            request_id,
            arrived,
            disconnected,
            retrieve_base=str(request.base_url).rstrip("/") + router.prefix,
            series_out=series,
        )
    finally:
        disconnected.cancel()
    stow = store_instances_response(outcomes, study_retrieve_url=None)
    status = stow_status(outcomes)
    headers = _retry_after(outcomes)
    if not wrapper:
        return JSONResponse(stow, status_code=status, media_type=DICOM_JSON, headers=headers)
    results = []
    for outcome in outcomes:
        entry: dict[str, Any] = {
            "index": outcome.index,
            "sop_instance_uid": outcome.ids.sop_instance_uid,
            "study_instance_uid": outcome.ids.study_instance_uid,
            "status": "assessed" if outcome.stored else "failed",
        }
        if outcome.stored:
            entry.update(outcome.extras)
        else:
            entry.update(
                {
                    "failure_reason": outcome.failure_reason,
                    "failure_reason_hex": f"0x{outcome.failure_reason:04X}",
                    "error": outcome.error,
                    "detail": outcome.detail,
                }
            )
        results.append(entry)
    return JSONResponse({"stow": stow, "results": results, "series": series}, status_code=status, headers=headers)


# Seconds a sender should wait before resending instances refused for lack of resources (0xA700), by error.
_RETRY_AFTER_S = {"overloaded": 1, "timeout": 1, "not_ready": 5}


def _retry_after(outcomes: list[StowOutcome]) -> dict[str, str]:
    """Retry-After when some instance was refused for a passing reason (queue full, deadline, warming up), as
    /assess sends with its 503s: resending those instances later can succeed."""
    waits = [_RETRY_AFTER_S[o.error] for o in outcomes if not o.stored and o.error in _RETRY_AFTER_S]
    return {"Retry-After": str(max(waits))} if waits else {}


@router.post(
    "/studies",
    summary="Store instances (STOW-RS) and assess each",
    description=_STORE_DESCRIPTION,
    responses=_STORE_RESPONSES,
    openapi_extra={"requestBody": _STORE_BODY},
    response_class=Response,
)
async def store_instances(
    request: Request,
    settings: SettingsDep,
    caller: AssessCaller,
    model: ModelQuery = None,
    method: MethodQuery = DEFAULT_METHOD,
) -> Response:
    return await _store(request, settings, None, model, method, caller.key_id)


@router.post(
    "/studies/{study_uid}",
    summary="Store instances of one study (STOW-RS) and assess each",
    description=_STORE_DESCRIPTION + " An instance of another study fails with 0xA900.",
    responses=_STORE_RESPONSES,
    openapi_extra={"requestBody": _STORE_BODY},
    response_class=Response,
)
async def store_study_instances(
    request: Request,
    settings: SettingsDep,
    caller: AssessCaller,
    study_uid: Annotated[str, Path(description="Study Instance UID", max_length=64, pattern=_UID_PATTERN)],
    model: ModelQuery = None,
    method: MethodQuery = DEFAULT_METHOD,
) -> Response:
    return await _store(request, settings, study_uid, model, method, caller.key_id)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
    summary="Retrieve a result instance (WADO-RS)",
    response_class=Response,
    description="One of NormGate's recent result instances (Secondary Capture or SR) as "
    '`multipart/related; type="application/dicom"` (PS3.18 §10.4). Only results are kept, '
    "never the received originals: from this process's memory (NORMGATE_DICOMWEB_RESULT_CACHE_MB) or the "
    "store shared by every replica (NORMGATE_DICOMWEB_RESULT_RETENTION_HOURS).",
    responses={
        200: {"content": {'multipart/related; type="application/dicom"': {}}},
        401: {"model": ErrorResponse, "description": "unauthorized"},
        403: {"model": ErrorResponse, "description": "forbidden: the API key lacks the 'assess' scope"},
        404: {"model": ErrorResponse, "description": "not_found: no such result (or dropped)"},
        406: {"model": ErrorResponse, "description": "not_acceptable"},
    },
)
async def retrieve_result_instance(
    request: Request,
    _caller: AssessCaller,
    study_uid: Annotated[str, Path(max_length=64, pattern=_UID_PATTERN)],
    series_uid: Annotated[str, Path(max_length=64, pattern=_UID_PATTERN)],
    sop_uid: Annotated[str, Path(max_length=64, pattern=_UID_PATTERN)],
) -> Response:
    accept = request.headers.get("accept") or "*/*"
    accepted = [p.split(";", 1)[0].strip().lower() for p in accept.split(",")]
    if not any(t in ("multipart/related", "multipart/*", "*/*") for t in accepted):
        raise NotAcceptable('instances are served as multipart/related; type="application/dicom"')
    item = await _stow_service(request).results.lookup(study_uid, series_uid, sop_uid)
    if item is None:
        raise ResultNotFound(
            f"no NormGate result instance {sop_uid} in series {series_uid} of study {study_uid} "
            "(only recent results are kept)"
        )
    body, content_type = build_multipart_related([item.part10], f"normgate-{uuid.uuid4().hex}")
    return Response(body, media_type=None, headers={"content-type": content_type})


__all__ = ["DICOM_MEDIA_TYPE", "router", "start_dicomweb", "stop_dicomweb"]
