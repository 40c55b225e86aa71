"""``python -m service.evaluate``: the offline Pointing Game job (docs/evaluation.md), resumable, shardable.

    python -m service.evaluate --data ROOT --split test --model PATH[,PATH…] --methods ID[,ID…] \\
        [--tau-rel 0.025 | --tau 15] [--smooth-sigma 1.0] [--repeat N] \\
        [--init trained|random-head|pretrained-backbone|full-random] [--pretext DIR] \\
        [--postprocess none|seed] [--path-baseline zero|black] \\
        [--combine geometric-mean|minmax-product] [--batch-size 8] [--shard i/n] [--job-db FILE] --out DIR
    python -m service.evaluate merge --out DIR SHARD_DIR [SHARD_DIR …]
    python -m service.evaluate compare --out FILE.html [LABEL=]RUN_DIR …    # runs side by side
    python -m service.evaluate run-job --job-db FILE --job-id ID      # what the server's runner starts

Every run is a job in a SQLite file (``--job-db``, default ``DIR/job.sqlite3``). Per-image rows are stored
batch by batch; running the same command again after a crash or a kill resumes the job where it stopped.
Outputs: ``DIR/results.json``, ``DIR/per_image.csv`` (columns in docs/formats.md, "per_image.csv") and a
self-contained ``DIR/report.html``. ``--shard i/n`` evaluates every n-th image starting at i; ``merge`` joins the
shard folders into the same outputs a single run would give (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.pointing_game import argmax_point
from models.saliency import DEFAULT_METHOD
from service.evaluation import limits
from service.evaluation.jobs import (
    LEASE_ENV,
    LEASE_S,
    PARENT_PID_ENV,
    ROW_COLUMNS,
    Job,
    JobStore,
    Lease,
    LeaseHeld,
    LeaseKeeper,
    LeaseLost,
    bind_to_parent,
)

if TYPE_CHECKING:
    import torch

    from models.datasets import Sample
    from models.evaluation import EvaluatedModel, EvaluationConfig

CSV_COLUMNS = (
    "image",
    "model",
    "method",
    "label",
    "probability",
    "point_x",
    "point_y",
    "hit",
    "n_boxes",
    "energy_pg",
    "objects_hit",
)


class EvaluateUsageError(ValueError):
    """Bad command-line or request parameters (exit status 2 on the command line, 422 over HTTP)."""


def _split_list(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip() for s in items if s and s.strip()]


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in str(text)[:40].split("/"))
    except ValueError:
        raise EvaluateUsageError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise EvaluateUsageError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def build_params(
    *,
    data: str | Path,
    split: str,
    models: Sequence[str],
    methods: Sequence[str],
    tau: float | None,
    smooth_sigma: float,
    init: str,
    combine: str,
    batch_size: int,
    shard: tuple[int, int],
    seed: int = 0,
    repeat: int = 1,
    device: str = "cpu",
    out: str | Path | None = None,
    tau_rel: float | None = None,
    postprocess: str = "none",
    path_baseline: str = "zero",
    pretext: str | Path | Sequence[str | Path] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Validated, JSON-ready job parameters (paths made absolute). Raises EvaluateUsageError.

    ``tau`` (grid pixels) and ``tau_rel`` (fraction of the grid side) are exclusive; with neither, each model's
    ``tau_rel`` from its model.json applies. A deprecated ``init`` name warns and is stored under its new name.
    """
    from models.evaluation import COMBINE_MODES, DEPRECATED_INIT_ALIASES, INIT_MODES, EvaluationError, check_methods
    from models.saliency.gradients import PATH_BASELINES
    from models.saliency.postprocess import POSTPROCESS_MODES

    try:
        methods = check_methods(_split_list(methods))
    except EvaluationError as exc:
        raise EvaluateUsageError(str(exc)) from None
    models = _split_list(models)
    if not models:
        raise EvaluateUsageError("give at least one --model checkpoint folder")
    if init in DEPRECATED_INIT_ALIASES:
        warnings.warn(
            f"--init {init} is deprecated; use --init {DEPRECATED_INIT_ALIASES[init]} (same models)",
            FutureWarning,
            stacklevel=2,
        )
        init = DEPRECATED_INIT_ALIASES[init]
    if init not in INIT_MODES:
        raise EvaluateUsageError(f"--init must be one of {', '.join(INIT_MODES)}, got {init!r}")
    if isinstance(pretext, (str, Path)):
        pretexts = _split_list(str(pretext))
    else:
        pretexts = [str(f) for f in pretext or []]
    if (init == "pretrained-backbone") != bool(pretexts):
        raise EvaluateUsageError(
            "--pretext DIR (a folder of python -m models.pretext) goes with --init pretrained-backbone, and only there"
        )
    if combine not in COMBINE_MODES:
        raise EvaluateUsageError(f"--combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
    if postprocess not in POSTPROCESS_MODES:
        raise EvaluateUsageError(f"--postprocess must be one of {', '.join(POSTPROCESS_MODES)}, got {postprocess!r}")
    if path_baseline not in PATH_BASELINES:
        raise EvaluateUsageError(f"--path-baseline must be one of {', '.join(PATH_BASELINES)}, got {path_baseline!r}")
    if tau is not None and tau_rel is not None:
        raise EvaluateUsageError("give the tolerance either as --tau (pixels) or as --tau-rel (fraction), not both")
    try:
        for name, text in (
            ("--data", str(data)),
            ("--split", split),
            *(("--model", m) for m in models),
            *(("--pretext", f) for f in pretexts),
        ):
            limits.check_path_text(name, text)
        limits.check_job_bounds(
            tau=tau,
            tau_rel=tau_rel,
            smooth_sigma=smooth_sigma,
            batch_size=batch_size,
            repeat=repeat,
            seed=seed,
            models=len(models),
            methods=len(methods),
            pretexts=len(pretexts),
            shards=shard[1],
        )
    except limits.BoundsError as exc:
        raise EvaluateUsageError(str(exc)) from None
    if int(repeat) > 1 and init == "trained":
        raise EvaluateUsageError(
            "--repeat N > 1 is for the randomised --init modes (several seeds); "
            "repeat trained models by passing several checkpoints"
        )
    if not split or "/" in split or "\\" in split or split.startswith("."):
        raise EvaluateUsageError(f"--split must be a plain name such as test, got {split!r}")
    return {
        "data": str(Path(data).resolve()),
        "split": split,
        "models": [str(Path(m).resolve()) for m in models],
        "methods": methods,
        "tau": None if tau is None else float(tau),
        "tau_rel": None if tau_rel is None else float(tau_rel),
        "smooth_sigma": float(smooth_sigma),
        "init": init,
        "pretext": [str(Path(f).resolve()) for f in pretexts] or None,
        "postprocess": postprocess,
        "path_baseline": path_baseline,
        "combine": combine,
        "batch_size": int(batch_size),
        "shard": list(shard),
        "seed": int(seed),
        "repeat": int(repeat),
        "device": device,
        "out": None if out is None else str(Path(out).resolve()),
        "report": bool(report),
    }


def config_from_params(p: dict[str, Any]) -> EvaluationConfig:
    """The engine's configuration for stored job parameters (older jobs lack the newer keys: their defaults)."""
    from models.evaluation import EvaluationConfig

    return EvaluationConfig(
        methods=tuple(p["methods"]),
        tau=p.get("tau"),
        tau_rel=p.get("tau_rel"),
        smooth_sigmas=(p["smooth_sigma"],),
        combine=p["combine"],
        batch_size=p["batch_size"],
        seed=p["seed"],
        postprocess=p.get("postprocess", "none"),
        path_baseline=p.get("path_baseline", "zero"),
    )


def model_record(model: EvaluatedModel, config: EvaluationConfig) -> dict[str, Any]:
    """One model's entry under results.json ``models``, with the tolerance used for it."""
    tau_rel, tau_px = config.tolerance_for(model.meta)
    return {
        "arch": model.meta.arch,
        "name": model.meta.name,
        "version": model.meta.version,
        "input_size": list(model.meta.input_size),
        "threshold": model.meta.threshold,
        "init": model.init,
        "seed": model.seed,
        "source": model.source,
        "tau_rel": round(tau_rel, 6),
        "tau_px": round(tau_px, 4),
    }


# --- running a job -----------------------------------------------------------------------------------------


def run_job(
    store: JobStore, job_id: str, show_progress: bool = True, lease: Lease | None = None, parent_pid: int | None = None
) -> Job:
    """Run (or resume) one job to the end under its lease; returns its final state. Never raises for a failing
    job; :class:`LeaseHeld` when another live process runs it. A run whose lease is taken over stops writing."""
    job = store.get(job_id)
    if job.status in ("done", "cancelled"):
        return job
    lease = lease or Lease.new()
    store.acquire(job_id, lease)
    with LeaseKeeper(store, job_id, lease.token, parent_pid):
        try:
            _run_job(store, store.get(job_id), show_progress, lease.token)
        except KeyboardInterrupt:
            raise  # stays 'running': a later run resumes it
        except LeaseLost:
            pass  # another runner holds the job now and reports its outcome
        except Exception as exc:
            try:
                store.finish(job_id, "failed", f"{type(exc).__name__}: {exc}", token=lease.token)
            except LeaseLost:
                pass
    return store.get(job_id)


def _run_job(store: JobStore, job: Job, show_progress: bool, token: str) -> None:
    import torch
    from tqdm import tqdm

    from models.datasets import PathPolicy, read_split
    from models.device import resolve_device
    from models.evaluation import evaluate, image_key, load_models, shard_samples

    threads = os.environ.get("NORMGATE_EVAL_TORCH_THREADS")
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    p = job.params
    out_dir = Path(job.out_dir or p["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    # A server's job is confined to its data folder (the route checked it at submission; checked again here).
    confine = p.get("confine_to")
    policy = PathPolicy(Path(confine), limits.MAX_PATH_CHARS) if confine else None
    samples = read_split(p["data"], p["split"], policy=policy)
    samples = shard_samples(samples, *p["shard"])
    limits.check_image_count(len(samples), f"{p['split']}.csv")
    keys = [image_key(s, p["data"]) for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError("two images of the split have the same name; image names must be unique")
    device = resolve_device(p.get("device", "cpu"))
    models = load_models(
        p["models"], init=p["init"], seed=p["seed"], repeat=p["repeat"], device=device, pretext=p.get("pretext")
    )
    config = config_from_params(p)
    rows_per_image = len(models) * len(config.methods)
    completed = store.completed_images(job.id, rows_per_image)
    remaining = [s for s, k in zip(samples, keys) if k not in completed]
    store.set_total(job.id, total=len(samples), done=len(samples) - len(remaining), token=token)

    bar = tqdm(
        total=len(samples),
        initial=len(samples) - len(remaining),
        unit="img",
        desc="pointing game",
        disable=not show_progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for batch_keys, batch_rows in evaluate(remaining, models, config, root=p["data"], device=device):
            store.add_batch(job.id, [tuple(getattr(r, c) for c in ROW_COLUMNS) for r in batch_rows], token=token)
            bar.update(len(batch_keys))
            if store.cancel_requested(job.id):
                store.finish(job.id, "cancelled", token=token)
                return
    finally:
        bar.close()
    if store.cancel_requested(job.id):
        store.finish(job.id, "cancelled", token=token)
        return

    model_info = {m.key: model_record(m, config) for m in models}
    rows = store.rows(job.id)
    # The gallery recomputes maps for its cases; without a report nobody would look at it.
    with_report = p.get("report", True)
    gallery = build_gallery(rows, models, samples, keys, config, p["data"], device) if with_report else []
    write_outputs(out_dir, p, rows, model_info, gallery, elapsed_s=time.monotonic() - started)
    store.finish(job.id, "done", token=token)


def build_gallery(
    rows: list[dict[str, Any]],
    models: Sequence[EvaluatedModel],
    samples: Sequence[Sample],
    keys: Sequence[str],
    config: EvaluationConfig,
    data_root: str | Path,
    device: str | torch.device,
    per_side: int = 3,
    max_methods: int = 6,
) -> list[dict[str, Any]]:
    """Best and worst Pointing Game cases of the first model and first saliency method, with every method's
    map for those images (recomputed: maps are not stored)."""

    from models.evaluation import CONTROL_METHODS, DecodedBatch, saliency_maps, smooth_maps
    from models.imaging.grid import original_box_to_grid, resize_unit

    if not models:
        return []
    entry = models[0]
    methods = [m for m in config.methods if m not in CONTROL_METHODS] or list(config.methods)
    primary = methods[0]
    scored = [r for r in rows if r["model"] == entry.key and r["method"] == primary and r["hit"] is not None]
    best = sorted((r for r in scored if r["hit"]), key=lambda r: (-(r["energy_pg"] or 0.0), r["image"]))
    worst = sorted((r for r in scored if not r["hit"]), key=lambda r: ((r["energy_pg"] or 0.0), r["image"]))
    chosen = [("best", r) for r in best[:per_side]] + [("worst", r) for r in worst[:per_side]]
    if not chosen:
        return []
    by_key = dict(zip(keys, samples))
    picked = [(kind, r, by_key[r["image"]]) for kind, r in chosen if r["image"] in by_key]
    from models.datasets import load_gray

    grays = [load_gray(s.image_path) for _, _, s in picked]
    batch = DecodedBatch(samples=[s for _, _, s in picked], keys=[r["image"] for _, r, _ in picked], grays=grays)
    x = batch.tensor_for(entry.meta, device=device)
    # The saliency methods first, then the controls, so that the gallery shows what a filter would point at.
    image_controls = [m for m in config.methods if m in CONTROL_METHODS and m != "random"]
    shown = list(dict.fromkeys(methods[:max_methods] + image_controls))
    maps = saliency_maps(entry, x, shown, batch.keys, config, unit_images=batch.unit_for(entry.meta))
    grid_hw = tuple(int(v) for v in entry.meta.input_size)
    cases = []
    for i, (kind, row, sample) in enumerate(picked):
        panels = []
        boxes = [original_box_to_grid(b, grays[i].shape[:2], grid_hw) for b in sample.boxes]
        for method_id in shown:
            m = smooth_maps(maps[method_id][i : i + 1], config.smooth_sigmas[0])[0].numpy()
            panels.append({"method": method_id, "map": m, "point": argmax_point(m)})
        cases.append(
            {
                "kind": kind,
                "image": row["image"],
                "model": entry.key,
                "primary_method": primary,
                "energy_pg": row["energy_pg"],
                "hit": row["hit"],
                "probability": row["probability"],
                "gray": resize_unit(grays[i], grid_hw).numpy(),
                "boxes": boxes,
                "panels": panels,
            }
        )
    return cases


# --- outputs -----------------------------------------------------------------------------------------------


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_per_image_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    ordered = sorted(rows, key=lambda r: (r["model"], r["method"], r["image"]))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in ordered:
            writer.writerow([_csv_value(r[c]) for c in CSV_COLUMNS])
    os.replace(tmp, path)


def read_per_image_csv(path: Path) -> list[dict[str, Any]]:
    ints = ("label", "point_x", "point_y", "hit", "n_boxes", "objects_hit")
    floats = ("probability", "energy_pg")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise EvaluateUsageError(f"{path}: missing column(s) {missing}")
        for line in reader:
            row: dict[str, Any] = {"image": line["image"], "model": line["model"], "method": line["method"]}
            for c in ints:
                row[c] = int(line[c]) if line[c] != "" else None
            for c in floats:
                row[c] = float(line[c]) if line[c] != "" else None
            row["objects_hit"] = row["objects_hit"] or 0
            rows.append(row)
    return rows


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(
    out_dir: Path,
    params: dict[str, Any],
    rows: list[dict[str, Any]],
    model_info: dict[str, dict[str, Any]],
    gallery: list[dict[str, Any]] | None = None,
    elapsed_s: float | None = None,
    merged_from: list[str] | None = None,
) -> dict[str, Any]:
    from models.evaluation import summarise_rows
    from service.evaluation.report import render_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise_rows(
        rows,
        {k: v["arch"] for k, v in model_info.items()},
        {k: float(v.get("threshold", 0.5)) for k, v in model_info.items()},
        method_order=params.get("methods"),
    )
    images = sorted({r["image"] for r in rows})
    tolerances = {(v.get("tau_rel"), v.get("tau_px")) for v in model_info.values()}
    tau_rel, tau_px = next(iter(tolerances)) if len(tolerances) == 1 else (None, None)
    results = {
        "tau_rel": tau_rel,  # null when the models' grids give different tolerances: see models.<key>
        "tau_px": tau_px,
        "methods": summary["methods"],
        "classification": summary["classification"],
        "dom": summary["dom"],
        "repeated": summary["repeated"],
        "counts": {
            "images": len(images),
            "images_with_boxes": len({r["image"] for r in rows if r["hit"] is not None}),
            "rows": len(rows),
        },
        "models": model_info,
        "params": params,
        "run": {"elapsed_s": None if elapsed_s is None else round(elapsed_s, 3), "merged_from": merged_from},
    }
    if "dom_architectures" in summary:
        results["dom_architectures"] = summary["dom_architectures"]
    write_per_image_csv(out_dir / "per_image.csv", rows)
    _write_json(out_dir / "results.json", results)
    if params.get("report", True):
        html = render_report(results, rows, gallery or [])
        (out_dir / "report.html").write_text(html, encoding="utf-8")
    return results


# --- merge -------------------------------------------------------------------------------------------------


def merge(out_dir: str | Path, shard_dirs: Sequence[str | Path], with_gallery: bool = True) -> dict[str, Any]:
    """Join shard outputs into the outputs one unsharded run gives. Checks the shards belong together."""
    if not shard_dirs:
        raise EvaluateUsageError("merge needs at least one shard folder")
    params_list: list[dict[str, Any]] = []
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    model_info: dict[str, Any] = {}
    for folder in shard_dirs:
        folder = Path(folder)
        results_path, csv_path = folder / "results.json", folder / "per_image.csv"
        if not results_path.is_file() or not csv_path.is_file():
            raise EvaluateUsageError(f"{folder}: not a finished shard (needs results.json and per_image.csv)")
        results = json.loads(results_path.read_text(encoding="utf-8"))
        params_list.append(results["params"])
        model_info.update(results.get("models", {}))
        for r in read_per_image_csv(csv_path):
            key = (r["image"], r["model"], r["method"])
            if key in rows and rows[key] != r:
                raise EvaluateUsageError(f"{folder}: row {key} differs from another shard's")
            rows[key] = r
    same = [{k: v for k, v in p.items() if k not in ("shard", "out", "batch_size", "device")} for p in params_list]
    if any(s != same[0] for s in same[1:]):
        raise EvaluateUsageError(
            "the shard folders come from jobs with different parameters; merge only shards of one evaluation"
        )
    counts = {p["shard"][1] for p in params_list}
    indices = sorted(p["shard"][0] for p in params_list)
    if len(counts) != 1 or indices != list(range(next(iter(counts)))):
        raise EvaluateUsageError(f"expected shards 0..n-1 of one n, got {[tuple(p['shard']) for p in params_list]}")
    params = dict(params_list[0], shard=[0, 1], out=str(Path(out_dir).resolve()))
    gallery: list[dict[str, Any]] = []
    if with_gallery:
        gallery = _gallery_for_params(params, list(rows.values()))
    return write_outputs(
        Path(out_dir),
        params,
        list(rows.values()),
        model_info,
        gallery,
        merged_from=[str(Path(d).resolve()) for d in shard_dirs],
    )


def _gallery_for_params(params: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gallery needs the images and models again; skipped (report says so) when they are not reachable."""
    from models.datasets import read_split
    from models.evaluation import image_key, load_models

    try:
        samples = read_split(params["data"], params["split"])
        models = load_models(
            params["models"],
            init=params["init"],
            seed=params["seed"],
            repeat=params["repeat"],
            pretext=params.get("pretext"),
        )
    except (OSError, ValueError):
        return []
    config = config_from_params(params)
    keys = [image_key(s, params["data"]) for s in samples]
    return build_gallery(rows, models, samples, keys, config, params["data"], "cpu")


# --- command line ------------------------------------------------------------------------------------------


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service.evaluate",
        description="Pointing Game of saliency methods on a data set in Object-CXR layout (docs/evaluation.md). "
        "Subcommands: 'merge --out DIR SHARD_DIR…', 'compare --out FILE [LABEL=]RUN_DIR…' and "
        "'run-job --job-db FILE --job-id ID'.",
    )
    p.add_argument("--data", required=True, help="data set root (ROOT/<split>.csv, images under ROOT/<split>/)")
    p.add_argument("--split", default="test", help="split name (default: test)")
    p.add_argument("--model", required=True, help="checkpoint folder(s), comma-separated")
    p.add_argument(
        "--methods",
        default=DEFAULT_METHOD,
        help="saliency method ids, comma-separated; the model-free controls control-tophat, control-brightest, "
        "control-centre and random are evaluation-only methods",
    )
    p.add_argument(
        "--tau-rel",
        type=float,
        default=None,
        help="hit tolerance as a fraction of the model grid's side (default: the model.json's tau_rel, "
        "0.025 = the papers' 15 px at 600 for the chest model)",
    )
    p.add_argument("--tau", type=float, default=None, help="hit tolerance in model-grid pixels (instead of --tau-rel)")
    p.add_argument("--smooth-sigma", type=float, default=0.0, help="Gaussian σ on the map before argmax (0 = off)")
    p.add_argument(
        "--init",
        default="trained",
        help="trained | random-head | pretrained-backbone | full-random (semi-random: deprecated = random-head)",
    )
    p.add_argument(
        "--pretext", default=None, help="pretext backbone folder(s), one per arch, for --init pretrained-backbone"
    )
    p.add_argument(
        "--postprocess", default="none", help="none | seed: the papers' seed code's Grad-CAM/guided-backprop maps"
    )
    p.add_argument(
        "--path-baseline",
        default="zero",
        help="IG / Guided IG baseline: zero (0 in normalised space = mid-grey) | black (darkest pixel)",
    )
    p.add_argument("--repeat", type=int, default=1, help="seeds per checkpoint for the randomised inits")
    p.add_argument("--combine", default="geometric-mean", help="NormGrad combination: geometric-mean | minmax-product")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard", default=None, help="i/n: evaluate every n-th image starting at i")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomised models and the random control")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--job-db", default=None, help="SQLite job file (default DIR/job.sqlite3); rerun to resume")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-report", action="store_true", help="write results.json and per_image.csv only (no report.html)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "merge":
        p = argparse.ArgumentParser(
            prog="python -m service.evaluate merge",
            description="Merge shard outputs into one results.json/per_image.csv/report.",
        )
        p.add_argument("--out", required=True)
        p.add_argument("--no-gallery", action="store_true", help="do not reload models/images for the gallery")
        p.add_argument("shards", nargs="+")
        args = p.parse_args(argv[1:])
        try:
            merge(args.out, args.shards, with_gallery=not args.no_gallery)
        except EvaluateUsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"merged {len(args.shards)} shard(s) into {args.out}")
        return 0
    if argv and argv[0] == "compare":
        p = argparse.ArgumentParser(
            prog="python -m service.evaluate compare",
            description="Put finished runs side by side (rows = methods; columns = runs, e.g. trained / "
            "random-head / pretrained-backbone / full-random, σ 0 / 1), like the papers' Tables 2 and 4.",
        )
        p.add_argument("--out", required=True, help="HTML file to write")
        p.add_argument("--metric", default="pointing_game", choices=("pointing_game", "energy_pg", "froc"))
        p.add_argument("runs", nargs="+", help="run folders, each optionally LABEL=FOLDER")
        args = p.parse_args(argv[1:])
        from service.evaluation.report import render_comparison

        runs = []
        for item in args.runs:
            label, _, folder = item.rpartition("=")
            folder_path = Path(folder)
            results_path = folder_path / "results.json"
            if not results_path.is_file():
                print(f"error: {folder}: no results.json (not a finished run)", file=sys.stderr)
                return 2
            results = json.loads(results_path.read_text(encoding="utf-8"))
            if not label:
                prm = results.get("params", {})
                label = f"{prm.get('init', '?')} σ={prm.get('smooth_sigma', 0):g}"
            runs.append((label, results))
        Path(args.out).write_text(render_comparison(runs, args.metric), encoding="utf-8")
        print(f"wrote {args.out}")
        return 0
    if argv and argv[0] == "run-job":
        p = argparse.ArgumentParser(prog="python -m service.evaluate run-job")
        p.add_argument("--job-db", required=True)
        p.add_argument("--job-id", required=True)
        p.add_argument("--lease-s", type=float, default=LEASE_S)
        args = p.parse_args(argv[1:])
        # Started by a server's runner: die with it, and run under the lease it took for this job.
        parent = int(os.environ.get(PARENT_PID_ENV, "0") or 0) or None
        if parent is not None:
            bind_to_parent(parent)
        # The server's runner asks for a lower CPU priority; the child applies it to itself (no preexec_fn,
        # which is unsafe in the threaded server).
        nice = int(os.environ.get("NORMGATE_EVAL_NICE", "0") or 0)
        if nice > 0 and hasattr(os, "nice"):
            os.nice(nice)
        store = JobStore(args.job_db, lease_s=args.lease_s)
        try:
            finished = run_job(store, args.job_id, True, Lease.new(os.environ.get(LEASE_ENV)), parent)
        except LeaseHeld as exc:
            print(f"not started: {exc}", file=sys.stderr)
            return 0
        return 0 if finished.status in ("done", "cancelled") else 1

    args = _run_parser().parse_args(argv)
    try:
        params = build_params(
            data=args.data,
            split=args.split,
            models=args.model,
            methods=args.methods,
            tau=args.tau,
            smooth_sigma=args.smooth_sigma,
            init=args.init,
            combine=args.combine,
            batch_size=args.batch_size,
            shard=parse_shard(args.shard),
            seed=args.seed,
            repeat=args.repeat,
            device=args.device,
            out=args.out,
            tau_rel=args.tau_rel,
            postprocess=args.postprocess,
            path_baseline=args.path_baseline,
            pretext=args.pretext,
            report=not args.no_report,
        )
    except EvaluateUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(params["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(args.job_db or out_dir / "job.sqlite3")
    job = store.find_resumable(params)
    if job is not None:
        print(f"resuming job {job.id} ({job.done}/{job.total} images done)", file=sys.stderr)
        store.set_out_dir(job.id, out_dir)
    else:
        job = store.create(params, out_dir=out_dir, status="running")
    try:
        job = run_job(store, job.id, show_progress=not args.quiet)
    except LeaseHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if job.status != "done":
        print(f"job {job.id} {job.status}: {job.error or ''}", file=sys.stderr)
        return 1
    written = ["results.json", "per_image.csv"] + (["report.html"] if params["report"] else [])
    print(f"job {job.id} done: {', '.join(str(out_dir / name) for name in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
