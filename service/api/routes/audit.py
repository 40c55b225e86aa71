"""The audit trail over HTTP: GET /audit (filters, keyset pages, CSV export), GET /audit/{assessment_id}, and the
radiographers' verdicts, POST /assessments/{assessment_id}/verdict (docs/api.md, "Audit trail and verdicts").

Also the store's lifecycle, called from the app's lifespan: migrate (a database that is down does not stop the
service: the audit writer spools until it returns), start the audit writer and subscribe it to every decision,
run the retention task. Every database call runs in a thread; one that cannot reach the database is ``503
not_ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.api.deps import AssessCaller, AuditCaller, MetricsDep
from service.config import Settings
from service.db import queries
from service.db.audit import SPOOL_FILE, AuditTrail, retention_loop
from service.db.queries import RECORD_COLUMNS, AuditFilter, BadCursor
from service.db.store import Store
from service.errors import ApiError, BadParameter, NotReady
from service.schemas import (
    AuditPage,
    AuditRecord,
    AuditRecordDetail,
    ErrorResponse,
    VerdictEntry,
    VerdictRequest,
    VerdictResponse,
)

log = logging.getLogger("normgate.audit")
router = APIRouter(tags=["audit"])

RETENTION_INTERVAL_S = 3600.0
# A verdict may arrive before the writer has stored its decision (the buffer is written behind): wait this long.
VERDICT_FLUSH_WAIT_S = 5.0
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
CSV_VERDICT_COLUMNS = ("verdict", "verdict_note", "verdict_time", "verdict_key_id")
T = TypeVar("T")


class AssessmentNotFound(ApiError):
    status, code = 404, "not_found"


# -- lifecycle: called from the app's lifespan -------------------------------------------------------------


async def start_store(app: FastAPI, settings: Settings) -> None:
    store = Store(settings.store_url)  # a malformed or unsupported URL fails start-up here
    try:
        await asyncio.to_thread(store.ensure_schema)
    except Exception as exc:
        log.warning(
            "store %s unreachable at start-up (%s); decisions spool until it answers",
            store.description,
            type(exc).__name__,
        )
    trail = AuditTrail(store, Path(settings.state_dir) / SPOOL_FILE, settings.audit_buffer_size)
    trail.start()
    metrics = app.state.metrics
    metrics.audit_spool_depth.set_function(lambda: trail.spool.depth)
    if settings.audit_enabled:
        app.state.assessor.decision_listeners.append(trail.record)
    app.state.store = store
    app.state.audit = trail
    app.state.retention = asyncio.create_task(
        retention_loop(
            store, settings.audit_retention_days, settings.dicomweb_result_retention_hours, RETENTION_INTERVAL_S
        ),
        name="normgate-retention",
    )


async def stop_store(app: FastAPI, timeout_s: float = 10.0) -> None:
    task: asyncio.Task[None] | None = getattr(app.state, "retention", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    trail: AuditTrail | None = getattr(app.state, "audit", None)
    if trail is not None:
        listeners = app.state.assessor.decision_listeners
        if trail.record in listeners:
            listeners.remove(trail.record)
        await asyncio.to_thread(trail.stop, timeout_s)
    store: Store | None = getattr(app.state, "store", None)
    if store is not None:
        store.dispose()


def _store(request: Request) -> Store:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:  # an app built without its lifespan
        raise NotReady("the audit store is not started", headers={"Retry-After": "5"})
    return store


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking store call off the event loop; a database that cannot be reached is 503 not_ready."""
    try:
        return await asyncio.to_thread(function, *args)
    except (ApiError, BadCursor, ValueError):
        raise
    except Exception as exc:
        log.warning("audit store call %s failed: %s", getattr(function, "__name__", function), type(exc).__name__)
        raise NotReady("the audit store cannot be reached; try again shortly", headers={"Retry-After": "5"}) from exc


# -- GET /audit --------------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _wants_csv(accept: str | None) -> bool:
    types = [piece.split(";", 1)[0].strip().lower() for piece in (accept or "").split(",")]
    return "text/csv" in types


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    # A cell a spreadsheet would run as a formula (=, +, -, @) is quoted as text (CSV injection); numbers are left.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_lines(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*RECORD_COLUMNS, *CSV_VERDICT_COLUMNS])
    for record in records:
        verdict = record.get("verdict") or {}
        writer.writerow(
            [_csv_cell(record[name]) for name in RECORD_COLUMNS]
            + [_csv_cell(verdict.get(k)) for k in ("verdict", "note", "time", "key_id")]
        )
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


Decision = Literal["reacquire", "accept", "unassessable"]
_UID = Annotated[str | None, Query(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")]


@router.get(
    "/audit",
    response_model=AuditPage,
    summary="Query the audit trail",
    description=(
        "Decisions newest first, with their current verdict, filtered by time range (`since` inclusive, `until` "
        "exclusive; ISO 8601, UTC when no offset is given), decision, model and DICOM UIDs, and API key id. "
        "Pages of `limit` records; pass `next_cursor` as `cursor` for the next. With `Accept: text/csv` the "
        "answer is every matching record as CSV (no pages): the file `python -m models.calibrate --labels` reads."
    ),
    responses={
        200: {"content": {"application/json": {}, "text/csv": {}}},
        **{s: {"model": ErrorResponse} for s in (401, 403, 422, 503)},
    },
)
async def query_audit(
    request: Request,
    _caller: AuditCaller,
    since: Annotated[datetime | None, Query(description="Earliest decision time (inclusive).")] = None,
    until: Annotated[datetime | None, Query(description="Latest decision time (exclusive).")] = None,
    decision: Annotated[Decision | None, Query()] = None,
    model: Annotated[str | None, Query(max_length=128, description="Model name.")] = None,
    study_instance_uid: _UID = None,
    series_instance_uid: _UID = None,
    sop_instance_uid: _UID = None,
    key_id: Annotated[str | None, Query(max_length=64, description="API key id.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Records per page (JSON only).")] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page.")] = None,
) -> Response:
    store = _store(request)
    where = AuditFilter(
        since=_utc(since),
        until=_utc(until),
        decision=decision,
        model=model,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        key_id=key_id,
    )
    engine = await _in_thread(store.require)
    if _wants_csv(request.headers.get("accept")):
        # Streamed page by page from a thread (Starlette iterates a plain iterator off the event loop).
        return StreamingResponse(
            _csv_lines(queries.iter_records(engine, where)),
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": 'attachment; filename="normgate-audit.csv"'},
        )
    try:
        records, next_cursor = await _in_thread(queries.query_records, engine, where, limit, cursor)
    except BadCursor as exc:
        raise BadParameter(str(exc)) from None
    page = AuditPage(records=[AuditRecord.model_validate(r) for r in records], next_cursor=next_cursor)
    return JSONResponse(page.model_dump(mode="json"))


_ASSESSMENT_ID = Annotated[str, PathParam(max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]


@router.get(
    "/audit/{assessment_id}",
    response_model=AuditRecordDetail,
    summary="One decision of the audit trail, with every verdict",
    responses={s: {"model": ErrorResponse} for s in (401, 403, 404, 503)},
)
async def audit_record(request: Request, _caller: AuditCaller, assessment_id: _ASSESSMENT_ID) -> AuditRecordDetail:
    store = _store(request)
    engine = await _in_thread(store.require)
    record = await _in_thread(queries.get_record, engine, assessment_id)
    if record is None:
        trail: AuditTrail = request.app.state.audit
        await asyncio.to_thread(trail.flush, VERDICT_FLUSH_WAIT_S)  # it may still be waiting to be written
        record = await _in_thread(queries.get_record, engine, assessment_id)
    if record is None:
        raise AssessmentNotFound(f"no decision {assessment_id!r} in the audit trail")
    return AuditRecordDetail.model_validate(record)


# -- POST /assessments/{assessment_id}/verdict -------------------------------------------------------------


@router.post(
    "/assessments/{assessment_id}/verdict",
    response_model=VerdictResponse,
    status_code=201,
    summary="Record a radiographer's verdict on a decision",
    description=(
        "The newest verdict counts for the decision; earlier ones are kept (GET /audit/{assessment_id} lists "
        "them). Counted in normgate_verdicts_total{model, verdict}."
    ),
    responses={s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 422, 503)},
)
async def record_verdict(
    request: Request,
    metrics: MetricsDep,
    caller: AssessCaller,
    assessment_id: _ASSESSMENT_ID,
    body: VerdictRequest,
) -> VerdictResponse:
    store = _store(request)
    engine = await _in_thread(store.require)
    key_id = caller.key_id
    client = request.client.host if request.client else None
    now = datetime.now(UTC)
    stored = await _in_thread(queries.add_verdict, engine, assessment_id, body.verdict, body.note, now, key_id, client)
    if stored is None:
        trail: AuditTrail = request.app.state.audit
        await asyncio.to_thread(trail.flush, VERDICT_FLUSH_WAIT_S)  # the decision may be in the write-behind buffer
        stored = await _in_thread(
            queries.add_verdict, engine, assessment_id, body.verdict, body.note, now, key_id, client
        )
    if stored is None:
        raise AssessmentNotFound(f"no decision {assessment_id!r} in the audit trail")
    verdict, superseded, model = stored
    metrics.verdicts.labels(model, body.verdict).inc()
    return VerdictResponse(
        assessment_id=assessment_id,
        verdict=VerdictEntry.model_validate(verdict),
        supersedes=VerdictEntry.model_validate(superseded) if superseded else None,
    )
