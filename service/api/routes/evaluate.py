"""``/evaluate``: the offline Pointing Game job over HTTP (docs/api.md, "/evaluate jobs"), same code as the CLI.

``POST /evaluate`` takes a JSON body (``application/json`` only: a cross-site form cannot send one) mirroring
the CLI flags and answers 202 ``{"job_id": …}``; the job is stored in SQLite and run by
:class:`service.evaluation.jobs.EvaluationRunner` in a low-priority child process, one job at a time. ``GET
/evaluate/{id}`` gives status and progress (and the results when done), ``GET /evaluate/{id}/report`` the HTML
report, ``DELETE /evaluate/{id}`` cancels.

Everything a job would refuse is refused here, before it is queued, as ``422 bad_parameter``: numbers outside
the bounds of :mod:`service.evaluation.limits` (the CLI's), paths that leave the configured roots, and a data set
any of whose image paths is absolute, goes up with ``..``, or is a symbolic link out of ``NORMGATE_DATA_DIR``
(the error names the CSV file and line). ``data`` is relative to ``NORMGATE_DATA_DIR`` (or an absolute path
inside it); a model is a checkpoint name under ``NORMGATE_MODELS_DIR`` or a folder inside one of the roots,
and so is a ``pretext`` backbone folder (``init: pretrained-backbone``), its ``pretext.json`` resolved too.
A full queue is 503 ``overloaded`` with Retry-After. Answers name files relative to those folders, never by
their path on the server. Errors are :mod:`service.errors` (so they carry the request id). Routes only move JSON
and files; no tensor is touched here.

App wiring (service/app.py lifespan): ``start_evaluation_runner(app, settings)`` on startup,
``stop_evaluation_runner(app)`` on shutdown, and ``app.include_router(router)``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from models.datasets import DatasetError, PathPolicy, read_split
from models.imaging import media_type_of
from models.saliency import DEFAULT_METHOD
from service.api.deps import EvaluateCaller
from service.api.upload import read_limited_body
from service.errors import (
    BadParameter,
    JobAlreadyFinished,
    JobNotDone,
    NotFound,
    NotReady,
    Overloaded,
    UnsupportedMediaType,
)
from service.evaluation import limits
from service.evaluation.cli import EvaluateUsageError, build_params, parse_shard
from service.evaluation.jobs import EvaluationRunner, JobNotFound, QueueFull
from service.schemas import ErrorResponse

# Every evaluation endpoint needs a key with the 'evaluate' scope (when keys are configured): jobs read data sets and models.
router = APIRouter(tags=["evaluation"])

# A job request is a handful of flags; anything bigger is not one.
MAX_JOB_REQUEST_BYTES = 64 * 1024
# How long a client whose job did not fit in the queue should wait before trying again.
QUEUE_FULL_RETRY_AFTER_S = 60

PathText = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_PATH_CHARS)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_NAME_CHARS)]


class EvaluateRequest(BaseModel):
    """The CLI flags of ``python -m service.evaluate`` as JSON (lists or comma-separated strings), with the
    CLI's bounds (service/evaluation/limits.py)."""

    model_config = ConfigDict(extra="forbid")

    data: PathText = Field(..., description="data set root, relative to NORMGATE_DATA_DIR")
    split: Name = "test"
    model: PathText | Annotated[list[PathText], Field(min_length=1, max_length=limits.MAX_MODELS)] = Field(
        "default", description="checkpoint name(s) under NORMGATE_MODELS_DIR"
    )
    methods: (
        Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_NAME_CHARS * limits.MAX_METHODS)]
        | Annotated[list[Name], Field(min_length=1, max_length=limits.MAX_METHODS)]
    ) = DEFAULT_METHOD
    tau: Annotated[float, Field(ge=0, le=limits.MAX_TAU, allow_inf_nan=False)] | None = Field(
        None, description="tolerance in grid pixels; not with tau_rel"
    )
    tau_rel: Annotated[float, Field(gt=0, le=limits.MAX_TAU_REL, allow_inf_nan=False)] | None = Field(
        None, description="tolerance as a fraction of the grid's shorter side; default the model's"
    )
    smooth_sigma: float = Field(0.0, ge=0, le=limits.MAX_SMOOTH_SIGMA, allow_inf_nan=False)
    init: Name = "trained"
    pretext: PathText | Annotated[list[PathText], Field(min_length=1, max_length=limits.MAX_PRETEXTS)] | None = Field(
        None, description="pretext backbone folder(s), one per architecture (init pretrained-backbone)"
    )
    postprocess: Name = "none"
    path_baseline: Name = "zero"
    repeat: int = Field(1, ge=1, le=limits.MAX_REPEAT)
    combine: Name = "geometric-mean"
    batch_size: int = Field(8, ge=1, le=limits.MAX_BATCH_SIZE)
    shard: Annotated[str, StringConstraints(max_length=40)] | None = None
    seed: int = Field(0, ge=0, le=limits.MAX_SEED)


def _documented(**by_status: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: JSON error bodies with what each status means here (401 and 403 on every route)."""
    statuses = {
        "401": "unauthorized: API keys are configured and this request has none that is valid",
        "403": "forbidden: the API key lacks the 'evaluate' scope",
        **by_status,
    }
    return {int(status.lstrip("_")): {"model": ErrorResponse, "description": text} for status, text in statuses.items()}


def start_evaluation_runner(app: FastAPI, settings: Any) -> EvaluationRunner:
    """Create the job runner from the settings (NORMGATE_DATA_DIR, NORMGATE_MODELS_DIR) and start it."""
    runner = EvaluationRunner.from_settings(settings)
    app.state.evaluation_runner = runner
    runner.start()
    return runner


def stop_evaluation_runner(app: FastAPI) -> None:
    runner = getattr(app.state, "evaluation_runner", None)
    if runner is not None:
        runner.stop()


def _runner(request: Request) -> EvaluationRunner | None:
    return getattr(request.app.state, "evaluation_runner", None)


class _PathRejected(ValueError):
    pass


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root.resolve()) for root in roots)


def resolve_data_path(text: str, roots: list[Path]) -> Path:
    """A data set root inside one of ``roots`` (relative paths are taken from the first root)."""
    if not text or "\x00" in text:
        raise _PathRejected("data must be a non-empty path")
    candidate = Path(text)
    path = (candidate if candidate.is_absolute() else roots[0] / candidate).resolve()
    if not _inside(path, roots):
        raise _PathRejected(f"data path {text!r} is outside the configured data folder")
    if not path.is_dir():
        raise _PathRejected(f"data path {text!r} is not a folder under the data folder")
    return path


def resolve_model_path(text: str, models_dir: Path, roots: list[Path]) -> Path:
    """A checkpoint name under the models folder, or a checkpoint folder inside the allowed roots."""
    if not text or "\x00" in text:
        raise _PathRejected("model must be a non-empty checkpoint name")
    allowed = [models_dir, *roots]
    candidate = Path(text)
    if candidate.is_absolute():
        path = candidate.resolve()
    elif (models_dir / candidate).exists():
        path = (models_dir / candidate).resolve()
    else:
        path = (roots[0] / candidate).resolve()
    if not _inside(path, allowed):
        raise _PathRejected(f"model {text!r} is outside the models and data folders")
    if not (path / "model.json").is_file():
        raise _PathRejected(f"model {text!r} is not a checkpoint folder (no model.json)")
    return path


def resolve_pretext_path(text: str, models_dir: Path, roots: list[Path]) -> Path:
    """A pretext backbone folder (python -m models.pretext) under the models folder or inside the data roots,
    confined like the data set: resolved with its symbolic links, and its pretext.json too."""
    if not text or "\x00" in text:
        raise _PathRejected("pretext must be a non-empty folder name")
    allowed = [models_dir, *roots]
    candidate = Path(text)
    base = models_dir if (models_dir / candidate).exists() else roots[0]
    path = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not _inside(path, allowed):
        raise _PathRejected(f"pretext {text!r} is outside the models and data folders")
    meta = path / "pretext.json"
    if not meta.is_file():
        raise _PathRejected(f"pretext {text!r} is not a pretext folder (no pretext.json)")
    if not _inside(meta.resolve(), allowed):
        raise _PathRejected(f"pretext {text!r}: pretext.json is a symbolic link out of the models and data folders")
    return path


def check_data_set(data: Path, split: str, shard: tuple[int, int], root: Path) -> int:
    """Read the split's CSV as the job will, confined to ``root``: every image path relative, without ``..``, and
    inside ``root`` once symbolic links are resolved. Returns the job's image count; raises _PathRejected."""
    csv_path = data / f"{split}.csv"
    if not csv_path.is_file():
        raise _PathRejected(f"no {split}.csv in the data set folder")
    if not _inside(csv_path.resolve(), [root]):
        raise _PathRejected(f"{split}.csv is a symbolic link to a file outside the data folder")
    size = csv_path.stat().st_size
    if size > limits.MAX_CSV_BYTES:
        raise _PathRejected(f"{split}.csv is {size} bytes; the limit is {limits.MAX_CSV_BYTES}")
    try:
        samples = read_split(data, split, policy=PathPolicy(root.resolve(), limits.MAX_PATH_CHARS))
    except DatasetError as exc:
        raise _PathRejected(str(exc)) from None
    count = len(range(shard[0], len(samples), shard[1]))
    limits.check_image_count(count, f"{split}.csv")
    return count


def _build(runner: EvaluationRunner, req: EvaluateRequest) -> dict[str, Any]:
    data = resolve_data_path(req.data, runner.data_roots)
    names = req.model.split(",") if isinstance(req.model, str) else list(req.model)
    models = [str(resolve_model_path(n.strip(), runner.models_dir, runner.data_roots)) for n in names if n.strip()]
    shard = parse_shard(req.shard)
    params = build_params(
        data=data,
        split=req.split,
        models=models,
        methods=req.methods,
        tau=req.tau,
        smooth_sigma=req.smooth_sigma,
        init=req.init,
        combine=req.combine,
        batch_size=req.batch_size,
        shard=shard,
        seed=req.seed,
        repeat=req.repeat,
        device="cpu",
        tau_rel=req.tau_rel,
        postprocess=req.postprocess,
        path_baseline=req.path_baseline,
        pretext=[
            resolve_pretext_path(n.strip(), runner.models_dir, runner.data_roots)
            for n in (req.pretext.split(",") if isinstance(req.pretext, str) else req.pretext or [])
            if n.strip()
        ],
    )
    root = runner.data_roots[0].resolve()
    check_data_set(data, req.split, shard, root)
    params["confine_to"] = str(root)  # the job checks its data set again when it runs
    return params


class PathRedactor:
    """Rewrites the server's folders out of what a response says: a path under the data or models folder
    becomes relative to it (the job's outputs are under the data folder), any other absolute path its last
    part. Paths a client sent are kept as sent (they are its own words)."""

    # An absolute path of two or more parts in a sentence (not a URL path of ours: those start /evaluate).
    _ABSOLUTE = re.compile(r"(?<![\w.:/])/(?!evaluate\b)(?:[\w.@+-]+/)+([\w.@+-]*)")

    def __init__(self, roots: list[Path]) -> None:
        forms: set[str] = set()
        for root in roots:
            for form in (str(root), str(root.absolute()), os.path.realpath(root)):
                if form not in (".", "", "/"):
                    forms.add(form.rstrip("/"))
        self._roots = sorted(forms, key=len, reverse=True)

    def text(self, value: str, sentences: bool = False) -> str:
        for root in self._roots:
            if root in value:
                value = value.replace(root + "/", "").replace(root, ".")
        if sentences:
            value = self._ABSOLUTE.sub(lambda m: "…/" + m.group(1), value)
        return value

    def json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        return value


def _redactor(runner: EvaluationRunner) -> PathRedactor:
    return PathRedactor([runner.models_dir, *runner.data_roots])


@router.post(
    "/evaluate",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EvaluateRequest.model_json_schema()}},
        }
    },
    responses={
        202: {"description": "accepted: {job_id, status, progress}"},
        **_documented(
            _413="too_large: the body is over 64 KiB",
            _415="unsupported_media_type: the body is not application/json",
            _422="bad_parameter: a field out of its bounds, an unknown method/init/postprocess/path baseline, both "
            "tau and tau_rel, a pretext without init pretrained-backbone (or the reverse), a data, model or pretext "
            "path outside the data and models folders, a data set row whose image path leaves the data folder (the "
            "CSV file and line are named)",
            _503="overloaded: the job queue is full (Retry-After); not_ready: the job runner is not running or its "
            "store is not writable",
        ),
    },
)
async def submit_evaluation(request: Request, _caller: EvaluateCaller) -> JSONResponse:
    runner = _runner(request)
    if runner is None:
        raise NotReady("the evaluation job runner is not running", headers={"Retry-After": "5"})
    content_type = media_type_of(request.headers.get("content-type"))
    if content_type != "application/json":
        raise UnsupportedMediaType(f"the body must be application/json, got {content_type or 'no content type'}")
    raw = await read_limited_body(request, MAX_JOB_REQUEST_BYTES)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadParameter("the body must be a JSON object mirroring the CLI flags") from None
    if not isinstance(body, dict):
        raise BadParameter("the body must be a JSON object mirroring the CLI flags")
    try:
        req = EvaluateRequest(**body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = str(first["loc"][0]) if first.get("loc") else "body"  # the field, not pydantic's union branch
        raise BadParameter(f"{where}: {first.get('msg', 'invalid value')}") from None
    try:
        params = await run_in_threadpool(_build, runner, req)
    except (_PathRejected, EvaluateUsageError, limits.BoundsError, OSError) as exc:
        detail = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
        raise BadParameter(_redactor(runner).text(detail, sentences=True)) from None
    try:
        job = await run_in_threadpool(runner.submit, params)
    except QueueFull as exc:
        raise Overloaded(str(exc), headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)}) from None
    except (OSError, sqlite3.Error) as exc:
        raise NotReady(f"the evaluation job store is not writable ({type(exc).__name__})") from None
    return JSONResponse(
        status_code=202,
        content={"job_id": job.id, "status": job.status, "progress": {"done": job.done, "total": job.total}},
    )


def _job_body(runner: EvaluationRunner, job_id: str) -> dict[str, Any]:
    job = runner.store.get(job_id)
    body = job.to_dict()
    body["params"] = {k: v for k, v in job.params.items() if k not in ("out", "confine_to")}
    body["results"] = None
    if job.status == "done" and job.out_dir:
        results_path = Path(job.out_dir) / "results.json"
        if results_path.is_file():
            results = json.loads(results_path.read_text(encoding="utf-8"))
            body["results"] = {
                k: results.get(k)
                for k in ("methods", "classification", "dom", "repeated", "counts", "models", "tau_rel", "tau_px")
            }
            body["report"] = f"/evaluate/{job.id}/report"
    redactor = _redactor(runner)
    body = redactor.json(body)
    if body["error"]:
        body["error"] = redactor.text(body["error"], sentences=True)
    return dict(body)


def _job_or_404(runner: EvaluationRunner, job_id: str) -> Any:
    try:
        return runner.store.get(job_id)
    except JobNotFound:
        raise NotFound(f"no evaluation job {job_id[:64]!r}") from None


@router.get(
    "/evaluate/{job_id}",
    responses=_documented(_404="not_found: no such job", _503="not_ready: the job runner is not running"),
)
async def evaluation_status(job_id: str, request: Request, _caller: EvaluateCaller) -> JSONResponse:
    runner = _runner(request)
    if runner is None:
        raise NotReady("the evaluation job runner is not running", headers={"Retry-After": "5"})
    try:
        return JSONResponse(await run_in_threadpool(_job_body, runner, job_id))
    except JobNotFound:
        raise NotFound(f"no evaluation job {job_id[:64]!r}") from None


@router.get(
    "/evaluate/{job_id}/report",
    response_model=None,
    responses={
        200: {"description": "the HTML report", "content": {"text/html": {}}},
        **_documented(
            _404="not_found: no such job",
            _409="not_done: the job has not finished",
            _503="not_ready: the job runner is not running",
        ),
    },
)
async def evaluation_report(job_id: str, request: Request, _caller: EvaluateCaller) -> HTMLResponse:
    runner = _runner(request)
    if runner is None:
        raise NotReady("the evaluation job runner is not running", headers={"Retry-After": "5"})
    job = await run_in_threadpool(_job_or_404, runner, job_id)
    report = Path(job.out_dir or "") / "report.html"
    if job.status != "done" or not report.is_file():
        raise JobNotDone(f"job {job.id} is {job.status}; the report exists once it is done")
    html = report.read_text(encoding="utf-8")
    return HTMLResponse(_redactor(runner).text(html))


@router.delete(
    "/evaluate/{job_id}",
    status_code=202,
    responses={
        202: {"description": "cancellation requested"},
        **_documented(
            _404="not_found: no such job",
            _409="already_finished: the job is done or failed",
            _503="not_ready: the job runner is not running",
        ),
    },
)
async def cancel_evaluation(job_id: str, request: Request, _caller: EvaluateCaller) -> JSONResponse:
    runner = _runner(request)
    if runner is None:
        raise NotReady("the evaluation job runner is not running", headers={"Retry-After": "5"})
    try:
        job = await run_in_threadpool(runner.store.request_cancel, job_id)
    except JobNotFound:
        raise NotFound(f"no evaluation job {job_id[:64]!r}") from None
    if job.status in ("done", "failed"):
        raise JobAlreadyFinished(f"job {job.id} already {job.status}; nothing to cancel")
    return JSONResponse(status_code=202, content={"job_id": job.id, "status": job.status, "cancel_requested": True})
