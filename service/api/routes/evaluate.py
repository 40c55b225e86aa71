"""``/evaluate``: the offline Pointing Game job over HTTP (docs/api.md, "/evaluate jobs"), same code as the CLI.

``POST /evaluate`` takes a JSON body mirroring the CLI flags and answers 202 ``{"job_id": …}``; the job is
stored in SQLite and run by :class:`service.evaluation.jobs.EvaluationRunner` in a low-priority child process, one job at
a time. ``GET /evaluate/{id}`` gives status and progress (and the results when done), ``GET
/evaluate/{id}/report`` the HTML report, ``DELETE /evaluate/{id}`` cancels.

Paths in a request never leave the configured roots: ``data`` is relative to ``NORMGATE_DATA_DIR`` (or an
absolute path inside it); a model is a checkpoint name under ``NORMGATE_MODELS_DIR`` or a folder inside one of
the roots. Anything that resolves elsewhere (``..``, absolute paths, symlinks out) is 422 ``bad_parameter``.
Routes only move JSON and files; no tensor is touched here.

App wiring (service/app.py lifespan): ``start_evaluation_runner(app, settings)`` on startup,
``stop_evaluation_runner(app)`` on shutdown, and ``app.include_router(router)``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.saliency import DEFAULT_METHOD
from service.api.deps import EvaluateCaller
from service.api.upload import read_limited_body
from service.evaluation.cli import EvaluateUsageError, build_params, parse_shard
from service.evaluation.jobs import EvaluationRunner, JobNotFound
from service.schemas import ErrorResponse

# Every evaluation endpoint needs a key with the 'evaluate' scope (when keys are configured): jobs read data sets and models.
router = APIRouter(tags=["evaluation"])

# A job request is a handful of flags; anything bigger is not one.
MAX_JOB_REQUEST_BYTES = 64 * 1024


class EvaluateRequest(BaseModel):
    """The CLI flags of ``python -m service.evaluate`` as JSON (lists or comma-separated strings)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(..., description="data set root, relative to NORMGATE_DATA_DIR")
    split: str = "test"
    model: str | list[str] = Field("default", description="checkpoint name(s) under NORMGATE_MODELS_DIR")
    methods: str | list[str] = DEFAULT_METHOD
    tau: float | None = Field(None, description="tolerance in grid pixels; not with tau_rel")
    tau_rel: float | None = Field(None, description="tolerance as a fraction of the grid side; default the model's")
    smooth_sigma: float = 0.0
    init: str = "trained"
    pretext: str | list[str] | None = Field(None, description="pretext backbone folder(s) (init pretrained-backbone)")
    postprocess: str = "none"
    path_baseline: str = "zero"
    repeat: int = 1
    combine: str = "geometric-mean"
    batch_size: int = 8
    shard: str | None = None
    seed: int = 0


def _documented(**by_status: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: JSON error bodies with what each status means here (401 and 403 on every route)."""
    statuses = {
        "401": "unauthorized: API keys are configured and this request has none that is valid",
        "403": "forbidden: the API key lacks the 'evaluate' scope",
        **by_status,
    }
    return {int(status.lstrip("_")): {"model": ErrorResponse, "description": text} for status, text in statuses.items()}


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


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
    for root in roots:
        try:
            path.relative_to(root.resolve())
            return True
        except ValueError:
            continue
    return False


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
    """A pretext backbone folder (python -m models.pretext) under the models folder or inside the data roots."""
    if not text or "\x00" in text:
        raise _PathRejected("pretext must be a non-empty folder name")
    candidate = Path(text)
    base = models_dir if (models_dir / candidate).exists() else roots[0]
    path = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not _inside(path, [models_dir, *roots]):
        raise _PathRejected(f"pretext {text!r} is outside the models and data folders")
    if not (path / "pretext.json").is_file():
        raise _PathRejected(f"pretext {text!r} is not a pretext folder (no pretext.json)")
    return path


def _build(runner: EvaluationRunner, req: EvaluateRequest) -> dict[str, Any]:
    data = resolve_data_path(req.data, runner.data_roots)
    if not (data / f"{req.split}.csv").is_file():
        raise _PathRejected(f"no {req.split}.csv in data folder {req.data!r}")
    names = req.model.split(",") if isinstance(req.model, str) else list(req.model)
    models = [str(resolve_model_path(n.strip(), runner.models_dir, runner.data_roots)) for n in names if n.strip()]
    return build_params(
        data=data,
        split=req.split,
        models=models,
        methods=req.methods,
        tau=req.tau,
        smooth_sigma=req.smooth_sigma,
        init=req.init,
        combine=req.combine,
        batch_size=req.batch_size,
        shard=parse_shard(req.shard),
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
            _422="bad_parameter: unknown method/init, both tau and tau_rel, path outside the data folder …",
            _503="not_ready: the job runner is not running or its store is not writable",
        ),
    },
)
async def submit_evaluation(request: Request, _caller: EvaluateCaller) -> JSONResponse:
    runner = _runner(request)
    if runner is None:
        return _error(503, "not_ready", "the evaluation job runner is not running")
    raw = await read_limited_body(request, MAX_JOB_REQUEST_BYTES)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(422, "bad_parameter", "the body must be a JSON object mirroring the CLI flags")
    if not isinstance(body, dict):
        return _error(422, "bad_parameter", "the body must be a JSON object mirroring the CLI flags")
    try:
        req = EvaluateRequest(**body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return _error(422, "bad_parameter", f"{where}: {first.get('msg', 'invalid value')}")
    try:
        params = await run_in_threadpool(_build, runner, req)
    except (_PathRejected, EvaluateUsageError) as exc:
        return _error(422, "bad_parameter", str(exc))
    try:
        job = await run_in_threadpool(runner.submit, params)
    except (OSError, sqlite3.Error) as exc:
        return _error(503, "not_ready", f"the evaluation job store is not writable ({exc})")
    return JSONResponse(
        status_code=202,
        content={"job_id": job.id, "status": job.status, "progress": {"done": job.done, "total": job.total}},
    )


def _job_body(runner: EvaluationRunner, job_id: str) -> dict[str, Any]:
    job = runner.store.get(job_id)
    body = job.to_dict()
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
    return body


@router.get(
    "/evaluate/{job_id}",
    responses=_documented(_404="not_found: no such job", _503="not_ready: the job runner is not running"),
)
async def evaluation_status(job_id: str, request: Request, _caller: EvaluateCaller) -> JSONResponse:
    runner = _runner(request)
    if runner is None:
        return _error(503, "not_ready", "the evaluation job runner is not running")
    try:
        return JSONResponse(await run_in_threadpool(_job_body, runner, job_id))
    except JobNotFound:
        return _error(404, "not_found", f"no evaluation job {job_id!r}")


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
async def evaluation_report(job_id: str, request: Request, _caller: EvaluateCaller) -> HTMLResponse | JSONResponse:
    runner = _runner(request)
    if runner is None:
        return _error(503, "not_ready", "the evaluation job runner is not running")
    try:
        job = await run_in_threadpool(runner.store.get, job_id)
    except JobNotFound:
        return _error(404, "not_found", f"no evaluation job {job_id!r}")
    report = Path(job.out_dir or "") / "report.html"
    if job.status != "done" or not report.is_file():
        return _error(409, "not_done", f"job {job_id} is {job.status}; the report exists once it is done")
    return HTMLResponse(report.read_text(encoding="utf-8"))


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
        return _error(503, "not_ready", "the evaluation job runner is not running")
    try:
        job = await run_in_threadpool(runner.store.request_cancel, job_id)
    except JobNotFound:
        return _error(404, "not_found", f"no evaluation job {job_id!r}")
    if job.status in ("done", "failed"):
        return _error(409, "already_finished", f"job {job_id} already {job.status}; nothing to cancel")
    return JSONResponse(status_code=202, content={"job_id": job.id, "status": job.status, "cancel_requested": True})
