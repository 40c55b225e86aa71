"""``python -m models.calibrate``: temperature scaling and the operating point of a checkpoint, fitted on a labelled
set, written into its ``model.json`` as a versioned ``calibration`` block (docs/operations.md, "Audit and
calibration"; the block is docs/formats.md, "model.json").

The labelled set is either a data set split (``--data ROOT --split dev``: the model is run on every image) or the
site's own cases: the CSV that ``GET /audit`` exports with ``Accept: text/csv`` (``--labels CSV``), where each row
carries the probability the service answered and the radiographer's verdict. This module never reads the
service's database; the export is the interface.

* **Temperature scaling** (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML, §4.2): one scalar
  T > 0 divides the logits before the softmax. With two classes the calibrated P(positive) is
  σ(m / T), m = logit_positive − logit_negative (the margin), so T is the minimiser of the mean negative
  log-likelihood −mean(y·log σ(m/T) + (1−y)·log(1−σ(m/T))), found by a bounded scalar search over log T. T does
  not change the order of the cases (AUC is the same), only how confident the probabilities are.
* **Operating point**: the threshold on the calibrated probability that keeps the sensitivity at or above a target
  (the largest such threshold, so the fewest needless re-acquisitions; default 0.95), or that keeps the share of
  re-acquire decisions at or below a target rate (the smallest such threshold).
* **ECE** (Naeini et al. 2015; Guo et al. 2017 eq. 3) on P(positive): the cases are put in 15 equal-width bins of
  the predicted probability, ECE = Σ_b (n_b / n) · |mean(y in b) − mean(p in b)|. The reliability diagram plots
  the same bins. **Brier score** (Brier 1950): mean (p − y)².
* **Confidence intervals**: percentile bootstrap (Efron & Tibshirani 1993), ``--bootstrap`` resamples of the
  cases with replacement (default 1000, seeded); the same resamples for before, after and their difference.

Labels from verdicts (rows of the export): ``agree`` keeps the decision (reacquire → positive, accept →
negative), ``reacquired_anyway`` → positive, ``accepted_anyway`` → negative; ``wrong_location`` says nothing
certain about the class and is left out, as are rows without a verdict, unassessable decisions, rows of other
weights (``weights_sha256``) and rows made under a calibration whose temperature is unknown. A row's margin is
T_row · logit(p_row), T_row the temperature in force when it was answered (1 uncalibrated; the current block's;
or one of its ``earlier_temperatures``). With ``--data FOLDER`` next to ``--labels``, DICOM files there whose SOP
Instance UID matches a row are run through the model instead, which also recovers rows of other weights.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import html
import io
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.optimize import minimize_scalar

from models.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointError, load_checkpoint
from models.datasets import DatasetError, dataset_fingerprint, load_gray, read_split
from models.imaging import preprocess_batch
from models.metadata import Calibration, ModelMetadata, portable_command

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ECE_BINS = 15
DEFAULT_SENSITIVITY = 0.95
DEFAULT_BOOTSTRAP = 1000
TEMPERATURE_RANGE = (0.05, 20.0)
# Probabilities are float32 in the service: saturated ones are clipped before the logit is taken.
_P_CLIP = 1e-7
VERDICT_LABELS = {"reacquired_anyway": 1, "accepted_anyway": 0}


class CalibrationError(ValueError):
    """The labelled set or the options cannot give a calibration; the message says which and why."""


# -- the numbers --------------------------------------------------------------------------------------------------


def sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form: no overflow for large |x|
    return out


def calibrated(margins: FloatArray, temperature: float) -> FloatArray:
    return sigmoid(margins / temperature)


def negative_log_likelihood(margins: FloatArray, labels: IntArray, temperature: float) -> float:
    z = margins / temperature
    # −log σ(z) = softplus(−z), −log(1−σ(z)) = softplus(z), computed stably with logaddexp.
    loss = np.where(labels == 1, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))
    return float(loss.mean())


def fit_temperature(margins: FloatArray, labels: IntArray) -> float:
    """The T in ``TEMPERATURE_RANGE`` minimising the mean NLL of σ(m/T) (a bounded search over log T)."""
    if len(margins) == 0 or len(set(labels.tolist())) < 2:
        raise CalibrationError("temperature scaling needs labelled cases of both classes")
    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(margins, labels, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(float(result.x)))


def expected_calibration_error(probs: FloatArray, labels: IntArray, bins: int = ECE_BINS) -> float:
    index = np.minimum((probs * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            total += count / len(probs) * abs(float(labels[members].mean()) - float(probs[members].mean()))
    return total


def brier_score(probs: FloatArray, labels: IntArray) -> float:
    return float(np.mean((probs - labels) ** 2))


def reliability_bins(probs: FloatArray, labels: IntArray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per bin of predicted probability: its range, count, mean prediction and observed positive rate."""
    index = np.minimum((probs * bins).astype(np.int64), bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "n": float(count),
                "mean_probability": float(probs[members].mean()) if count else float("nan"),
                "positive_rate": float(labels[members].mean()) if count else float("nan"),
            }
        )
    return rows


def _just_below(probs: FloatArray, value: float) -> float:
    """Halfway between ``value`` and the largest probability below it (0 when none): a threshold that takes the
    same decisions on these cases as ``value`` itself and does not depend on the last bits of the float32
    probability the service computes for a case that lies exactly on it."""
    below = probs[probs < value]
    return float((value + (below.max() if len(below) else 0.0)) / 2)


def threshold_for_sensitivity(probs: FloatArray, labels: IntArray, target: float) -> float:
    """A threshold with sensitivity P(p ≥ t | positive) ≥ ``target`` that re-acquires as few cases as possible:
    the decisions of the largest such threshold (just below the k-th most probable positive)."""
    positives = np.sort(probs[labels == 1])[::-1]
    if len(positives) == 0:
        raise CalibrationError("a target sensitivity needs positive cases in the labelled set")
    needed = max(1, math.ceil(target * len(positives) - 1e-9))
    return _just_below(probs, float(positives[needed - 1]))


def threshold_for_reacquire_rate(probs: FloatArray, rate: float) -> float:
    """A threshold re-acquiring at most a share ``rate`` of the cases, as many as that allows (ties decide
    together, so fewer when a tie straddles the limit)."""
    if len(probs) == 0:
        raise CalibrationError("a target re-acquire rate needs cases")
    allowed = math.floor(rate * len(probs) + 1e-9)
    ordered = np.sort(probs)[::-1]
    if allowed >= len(ordered):
        return _just_below(probs, float(ordered[-1]))
    # Above the (allowed+1)-th largest value (it and its ties are accepted), just below the next larger one.
    excluded = float(ordered[allowed])
    above = probs[probs > excluded]
    return float((excluded + (above.min() if len(above) else 1.0)) / 2)


def operating_point(probs: FloatArray, labels: IntArray | None, threshold: float) -> dict[str, float | None]:
    reacquire = probs >= threshold
    point: dict[str, float | None] = {"reacquire_rate": float(reacquire.mean()) if len(probs) else None}
    if labels is not None:
        pos, neg = labels == 1, labels == 0
        point["sensitivity"] = float(reacquire[pos].mean()) if pos.any() else None
        point["specificity"] = float((~reacquire[neg]).mean()) if neg.any() else None
    return point


def bootstrap_interval(
    statistic: Callable[[IntArray], float], n_cases: int, resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile 95 % interval of ``statistic(indices)`` over bootstrap resamples of the case indices."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = statistic(rng.integers(0, n_cases, n_cases))
        if not math.isnan(value):
            values.append(value)
    if not values:
        return (float("nan"), float("nan"))
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def _with_ci(value: float, interval: tuple[float, float]) -> dict[str, Any]:
    return {"value": round(value, 6), "ci95": [round(interval[0], 6), round(interval[1], 6)]}


def calibration_metrics(
    margins: FloatArray,
    labels: IntArray,
    temperature_before: float,
    temperature_after: float,
    threshold: float,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """ECE, Brier (before, after, after − before) and the operating point at ``threshold``, each with a 95 % CI."""
    before = calibrated(margins, temperature_before)
    after = calibrated(margins, temperature_after)
    n = len(labels)
    out: dict[str, Any] = {"n": n, "positives": int(labels.sum())}
    metric_functions: tuple[tuple[str, Callable[[FloatArray, IntArray], float]], ...] = (
        ("ece", expected_calibration_error),
        ("brier", brier_score),
    )
    for name, metric in metric_functions:
        for label, probs in (("before", before), ("after", after)):
            out[f"{name}_{label}"] = _with_ci(
                metric(probs, labels), bootstrap_interval(_resampled(metric, probs, labels), n, resamples, seed)
            )
        out[f"{name}_change"] = _with_ci(
            metric(after, labels) - metric(before, labels),
            bootstrap_interval(_resampled_change(metric, before, after, labels), n, resamples, seed),
        )
    point = operating_point(after, labels, threshold)
    out["at_threshold"] = {}
    for key, value in point.items():
        if value is not None:
            out["at_threshold"][key] = _with_ci(
                value, bootstrap_interval(_resampled_point(key, after, labels, threshold), n, resamples, seed)
            )
    return out


def _resampled(
    metric: Callable[[FloatArray, IntArray], float], probs: FloatArray, labels: IntArray
) -> Callable[[IntArray], float]:
    def statistic(indices: IntArray) -> float:
        return metric(probs[indices], labels[indices])

    return statistic


def _resampled_change(
    metric: Callable[[FloatArray, IntArray], float], before: FloatArray, after: FloatArray, labels: IntArray
) -> Callable[[IntArray], float]:
    def statistic(indices: IntArray) -> float:
        return metric(after[indices], labels[indices]) - metric(before[indices], labels[indices])

    return statistic


def _resampled_point(key: str, probs: FloatArray, labels: IntArray, threshold: float) -> Callable[[IntArray], float]:
    def statistic(indices: IntArray) -> float:
        return _nan_if_none(operating_point(probs[indices], labels[indices], threshold)[key])

    return statistic


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


# -- the labelled cases -------------------------------------------------------------------------------------------


@dataclass
class LabelledCases:
    """Margins (m = logit_positive − logit_negative of these weights) and labels, and where they came from."""

    margins: FloatArray
    labels: IntArray
    description: str
    fingerprint: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


def weights_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    with open(folder / WEIGHTS_FILE, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def margins_of_images(
    model: torch.nn.Module, meta: ModelMetadata, images: Sequence[npt.NDArray[np.float32]], batch_size: int
) -> FloatArray:
    """The logit margin of each image, preprocessed exactly as /assess does (``preprocess_batch``)."""
    out: list[float] = []
    negative = meta.classes.index(meta.negative_class)
    for start in range(0, len(images), batch_size):
        x = preprocess_batch(list(images[start : start + batch_size]), meta.input_size, meta.mean, meta.std)
        with torch.no_grad():
            logits = model(x).float()
        out += (logits[:, meta.positive_index] - logits[:, negative]).tolist()
    return np.asarray(out, dtype=np.float64)


def cases_from_split(
    model: torch.nn.Module, meta: ModelMetadata, root: Path, split: str, batch_size: int, progress: bool
) -> LabelledCases:
    samples = read_split(root, split, positive_class=meta.positive_class)
    if not samples:
        raise CalibrationError(f"{root}/{split}.csv lists no images")
    margins: list[float] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        margins += margins_of_images(model, meta, [load_gray(s.image_path) for s in chunk], batch_size).tolist()
        if progress:
            print(f"  {split}: {min(start + batch_size, len(samples))}/{len(samples)} images", file=sys.stderr)
    labels = np.asarray([s.label for s in samples], dtype=np.int64)
    return LabelledCases(
        np.asarray(margins, dtype=np.float64),
        labels,
        f"{split} split ({len(samples)} images, {int(labels.sum())} positive)",
        dataset_fingerprint(samples),
        {"images": len(samples)},
    )


def label_of_verdict(decision: str, verdict: str) -> int | None:
    """The class a verdict establishes (1 = the quality problem is there), or None when it establishes none."""
    if verdict == "agree":
        return {"reacquire": 1, "accept": 0}.get(decision)
    return VERDICT_LABELS.get(verdict)


def _dicom_files_by_sop(folder: Path) -> dict[str, Path]:
    import pydicom

    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:
            continue  # not DICOM: nothing to match
        uid = str(getattr(ds, "SOPInstanceUID", "") or "")
        if uid:
            found[uid] = path
    return found


def cases_from_audit_export(
    csv_path: Path,
    model: torch.nn.Module,
    meta: ModelMetadata,
    sha256: str,
    images: Path | None,
    batch_size: int,
) -> LabelledCases:
    """The verdict-labelled rows of a ``GET /audit`` CSV export (rules in the module docstring)."""
    temperatures: dict[str, float] = {}
    if meta.calibration is not None:
        temperatures.update(meta.calibration.earlier_temperatures)
        temperatures[meta.calibration.version] = meta.calibration.temperature
    files = _dicom_files_by_sop(images) if images is not None else {}
    counts: Counter[str] = Counter()
    margins: list[float] = []
    labels: list[int] = []
    rerun: list[tuple[Path, int]] = []
    try:
        handle = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CalibrationError(f"{csv_path}: cannot open ({exc.strerror or exc})") from None
    with handle:
        reader = csv.DictReader(handle)
        required = {"decision", "probability", "calibration", "weights_sha256", "verdict", "sop_instance_uid"}
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise CalibrationError(
                f"{csv_path}: not a GET /audit CSV export (missing column(s) {', '.join(sorted(missing))})"
            )
        for row in reader:
            counts["rows"] += 1
            verdict = (row.get("verdict") or "").strip()
            if not verdict:
                counts["no verdict"] += 1
                continue
            label = label_of_verdict(row["decision"], verdict)
            if label is None:
                counts[f"left out: {verdict} on {row['decision']}"] += 1
                continue
            sop = (row.get("sop_instance_uid") or "").strip()
            if sop in files:
                rerun.append((files[sop], label))
                counts["run again from --data"] += 1
                continue
            if (row.get("weights_sha256") or "") != sha256:
                counts["other weights"] += 1
                continue
            version = (row.get("calibration") or "").strip()
            temperature = 1.0 if not version else temperatures.get(version)
            if temperature is None:
                counts[f"unknown calibration {version}"] += 1
                continue
            try:
                p = float(row["probability"])
            except ValueError:
                counts["no probability"] += 1
                continue
            p = min(max(p, _P_CLIP), 1 - _P_CLIP)
            margins.append(temperature * math.log(p / (1 - p)))
            labels.append(label)
            counts["from the recorded probability"] += 1
    if rerun:
        rerun_margins = margins_of_images(model, meta, [load_gray(path) for path, _ in rerun], batch_size)
        margins += rerun_margins.tolist()
        labels += [label for _, label in rerun]
    if not labels:
        raise CalibrationError(f"{csv_path}: no usable verdict-labelled rows ({dict(counts)})")
    array = np.asarray(labels, dtype=np.int64)
    return LabelledCases(
        np.asarray(margins, dtype=np.float64),
        array,
        f"verdict export {csv_path.name} ({len(labels)} cases, {int(array.sum())} positive)",
        None,
        dict(counts),
    )


# -- the whole step -----------------------------------------------------------------------------------------------


@dataclass
class CalibrationRun:
    meta: ModelMetadata
    calibration: Calibration
    fitted: LabelledCases
    held_out: LabelledCases | None
    temperature_before: float
    seconds: float


def choose_threshold(
    probs: FloatArray, labels: IntArray, sensitivity: float | None, rate: float | None
) -> tuple[float, str]:
    if rate is not None:
        return threshold_for_reacquire_rate(probs, rate), f"re-acquire rate {rate:g}"
    target = DEFAULT_SENSITIVITY if sensitivity is None else sensitivity
    return threshold_for_sensitivity(probs, labels, target), f"sensitivity {target:g}"


def run_calibration(args: argparse.Namespace) -> CalibrationRun:
    started = time.perf_counter()
    folder = Path(args.model)
    try:
        checkpoint = load_checkpoint(folder)
    except CheckpointError as exc:
        raise CalibrationError(str(exc)) from None
    meta = checkpoint.meta
    model = checkpoint.model.eval()
    data = Path(args.data) if args.data else None
    if args.labels:
        fitted = cases_from_audit_export(Path(args.labels), model, meta, weights_sha256(folder), data, args.batch_size)
    else:
        if data is None:
            raise CalibrationError("--data ROOT (a data set in the Object-CXR layout) or --labels CSV is needed")
        fitted = cases_from_split(model, meta, data, args.split, args.batch_size, args.progress)
    held_out = None
    if args.eval_split:
        eval_root = Path(args.eval_data) if args.eval_data else None if args.labels else data
        if eval_root is None:
            raise CalibrationError("--eval-split needs a data set: --eval-data ROOT (or --data ROOT without --labels)")
        held_out = cases_from_split(model, meta, eval_root, args.eval_split, args.batch_size, args.progress)

    # "Before" is what the service answers today: uncalibrated (T = 1), whatever block the checkpoint had.
    temperature_before = 1.0
    # Rounded first: the threshold is chosen on the probabilities the stored temperature gives.
    temperature = round(fit_temperature(fitted.margins, fitted.labels), 6)
    probs = calibrated(fitted.margins, temperature)
    threshold, target = choose_threshold(probs, fitted.labels, args.target_sensitivity, args.target_reacquire_rate)
    metrics: dict[str, Any] = {
        "fitted": calibration_metrics(
            fitted.margins, fitted.labels, temperature_before, temperature, threshold, args.bootstrap, args.seed
        ),
        "bootstrap": args.bootstrap,
        "ece_bins": ECE_BINS,
        "checkpoint_version": meta.version,
    }
    if fitted.fingerprint:
        metrics["fitted"]["fingerprint"] = fitted.fingerprint
    if fitted.counts:
        metrics["fitted"]["rows"] = fitted.counts
    if held_out is not None:
        metrics["held_out"] = calibration_metrics(
            held_out.margins, held_out.labels, temperature_before, temperature, threshold, args.bootstrap, args.seed
        )
        metrics["held_out"]["split"] = args.eval_split
        if held_out.fingerprint:
            metrics["held_out"]["fingerprint"] = held_out.fingerprint
    earlier = dict(meta.calibration.earlier_temperatures) if meta.calibration else {}
    if meta.calibration is not None:
        earlier[meta.calibration.version] = meta.calibration.temperature
    version = args.version or f"{meta.version}+cal.{datetime.now(UTC):%Y%m%d}"
    earlier.pop(version, None)
    calibration = Calibration(
        version=version,
        temperature=temperature,
        threshold=threshold,
        target=target,
        fitted_on=fitted.description,
        metrics=metrics,
        earlier_temperatures=earlier,
    )
    return CalibrationRun(meta, calibration, fitted, held_out, temperature_before, time.perf_counter() - started)


def write_calibration(folder: Path, calibration: Calibration) -> Path:
    """Put the block into the checkpoint's ``model.json`` (validated, written atomically); other fields kept."""
    path = folder / META_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data["calibration"] = calibration.model_dump(mode="json")
    ModelMetadata.from_dict(data, source=str(path))  # never write a model.json the service would refuse
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- the report ---------------------------------------------------------------------------------------------------


def _reliability_png(cases: LabelledCases, temperature: float, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), dpi=100, sharey=True)
    for axis, (label, t) in zip(axes, (("before (T = 1)", 1.0), (f"after (T = {temperature:.3f})", temperature))):
        probs = calibrated(cases.margins, t)
        bins = reliability_bins(probs, cases.labels)
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        rates = [b["positive_rate"] for b in bins]
        counts = [b["n"] for b in bins]
        axis.bar(centres, rates, width=1 / ECE_BINS, edgecolor="#234", color="#6a9fd4", label="observed positive rate")
        axis.plot([0, 1], [0, 1], "--", color="#c33", label="perfect calibration")
        for x, r, n in zip(centres, rates, counts):
            if n:
                axis.annotate(f"{int(n)}", (x, 0.02 if math.isnan(r) else r), ha="center", va="bottom", fontsize=7)
        ece = expected_calibration_error(probs, cases.labels)
        axis.set_title(f"{label}: ECE {ece:.3f}", fontsize=10)
        axis.set_xlabel("predicted P(positive)")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
    axes[0].set_ylabel("observed positive rate (n per bin above bars)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _metric_rows(metrics: dict[str, Any]) -> str:
    def cell(entry: dict[str, Any]) -> str:
        lo, hi = entry["ci95"]
        return f"{entry['value']:.4f} <span class=ci>[{lo:.4f}, {hi:.4f}]</span>"

    rows = []
    for name in ("ece", "brier"):
        rows.append(
            f"<tr><th>{name.upper() if name == 'ece' else 'Brier'}</th><td>{cell(metrics[f'{name}_before'])}</td>"
            f"<td>{cell(metrics[f'{name}_after'])}</td><td>{cell(metrics[f'{name}_change'])}</td></tr>"
        )
    point = metrics["at_threshold"]
    rows.append(
        "<tr><th>at the threshold</th><td colspan=3>"
        + " · ".join(f"{html.escape(k.replace('_', ' '))} {cell(v)}" for k, v in point.items())
        + "</td></tr>"
    )
    return "\n".join(rows)


def write_report(run: CalibrationRun, path: Path) -> Path:
    cal = run.calibration
    sections = []
    for title, cases, metrics in (
        (f"Fitted on: {cal.fitted_on}", run.fitted, cal.metrics["fitted"]),
        *(
            [(f"Held out: {run.held_out.description}", run.held_out, cal.metrics["held_out"])]
            if run.held_out is not None
            else []
        ),
    ):
        image = _reliability_png(cases, cal.temperature, title)
        rows_note = ""
        if cases.counts and "rows" in metrics:
            rows_note = "<p>Rows: " + html.escape(", ".join(f"{k}: {v}" for k, v in cases.counts.items())) + "</p>"
        sections.append(
            f"<h2>{html.escape(title)}</h2>{rows_note}"
            "<table><tr><th></th><th>before (uncalibrated)</th><th>after</th><th>after − before</th></tr>"
            f"{_metric_rows(metrics)}</table>"
            f'<img alt="reliability diagram, {html.escape(title)}" src="data:image/png;base64,{image}">'
        )
    body = f"""<!doctype html><html lang=en><head><meta charset=utf-8>
<title>Calibration {html.escape(run.meta.name)} {html.escape(cal.version)}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#123}}
table{{border-collapse:collapse;margin:.5rem 0 1rem}}th,td{{border:1px solid #bcd;padding:.3rem .6rem;text-align:left}}
.ci{{color:#567;font-size:90%}}img{{max-width:100%}}code{{background:#eef}}</style></head><body>
<h1>Calibration of {html.escape(run.meta.name)} {html.escape(run.meta.version)}: {html.escape(cal.version)}</h1>
<p>Temperature <b>{cal.temperature:.4f}</b> (logits divided by it; fitted by minimising the negative log-likelihood),
threshold <b>{cal.threshold:.4f}</b> on the calibrated probability, chosen for <b>{html.escape(cal.target)}</b>.
ECE over {ECE_BINS} equal-width bins of P(positive); 95 % intervals from {cal.metrics["bootstrap"]} bootstrap
resamples of the cases. "Before" is the uncalibrated model (T = 1).</p>
{"".join(sections)}
<p>Written by <code>python -m models.calibrate</code> in {run.seconds:.0f} s.</p></body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


# -- command line -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.calibrate",
        description="Fit temperature scaling and the decision threshold of a checkpoint on a labelled set and write "
        "them into its model.json as a versioned calibration block.",
    )
    p.add_argument("--model", required=True, help="checkpoint folder (model.json + model.safetensors)")
    p.add_argument(
        "--data",
        help="data set root in the Object-CXR layout (with --split); with --labels: optional folder of the cases' "
        "DICOM files, run again by SOP Instance UID",
    )
    p.add_argument("--split", default="dev", help="split of --data to fit on (default dev)")
    p.add_argument("--labels", help="the CSV GET /audit exports (Accept: text/csv): the site's verdict-labelled cases")
    p.add_argument("--eval-split", help="also report before/after on this split (e.g. test), not fitted on")
    p.add_argument("--eval-data", help="data set root of --eval-split (default: --data)")
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--target-sensitivity",
        type=float,
        help=f"threshold keeping at least this sensitivity (default {DEFAULT_SENSITIVITY})",
    )
    target.add_argument("--target-reacquire-rate", type=float, help="threshold keeping at most this re-acquire rate")
    p.add_argument("--version", help="name of this calibration (default <model version>+cal.<YYYYMMDD>)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--report", help="HTML report path (default runs/calibration/<model>-<version>.html)")
    p.add_argument("--json", help="also write the calibration block to this JSON file")
    p.add_argument("--dry-run", action="store_true", help="report only; leave model.json as it is")
    p.add_argument("--progress", action="store_true", help="print progress while running the model")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for name in ("target_sensitivity", "target_reacquire_rate"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= 1:
            raise CalibrationError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")
    if args.bootstrap < 1 or args.batch_size < 1:
        raise CalibrationError("--bootstrap and --batch-size must be at least 1")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        run = run_calibration(args)
    except (CalibrationError, DatasetError, CheckpointError) as exc:
        print(f"calibrate: error: {exc}", file=sys.stderr)
        return 2
    cal = run.calibration
    cal.metrics["command"] = portable_command(["python", "-m", "models.calibrate", *(argv or sys.argv[1:])])
    fitted = cal.metrics["fitted"]
    print(f"{run.meta.name} {run.meta.version}: calibration {cal.version} on {cal.fitted_on}")
    print(f"  temperature {cal.temperature:.4f}, threshold {cal.threshold:.4f} ({cal.target})")
    for name in ("ece", "brier"):
        b, a = fitted[f"{name}_before"], fitted[f"{name}_after"]
        print(f"  {name}: {b['value']:.4f} {b['ci95']} → {a['value']:.4f} {a['ci95']}")
    if "held_out" in cal.metrics:
        held = cal.metrics["held_out"]
        for name in ("ece", "brier"):
            b, a = held[f"{name}_before"], held[f"{name}_after"]
            print(f"  held-out {held['split']} {name}: {b['value']:.4f} {b['ci95']} → {a['value']:.4f} {a['ci95']}")
    report = Path(args.report) if args.report else Path("runs") / "calibration" / f"{run.meta.name}-{cal.version}.html"
    print(f"  report: {write_report(run, report)}")
    if args.json:
        Path(args.json).write_text(json.dumps(cal.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    if not args.dry_run:
        print(f"  written: {write_calibration(Path(args.model), cal)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
