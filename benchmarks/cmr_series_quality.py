"""Held-out quality of the cardiac model per frame and per cine (a benchmark, not a test).

The model classifies every frame on its own (Ozer et al. 2023 §4.1.2); a cine is re-planned when any of its
frames reaches the threshold (service/serving/series.py, the rule /assess and the STOW-RS series results apply).
This script scores both on a split of the synthetic LVOT data set (``python -m models.synth.cmr``):

* per frame: accuracy at the model's threshold (the calibrated one when ``model.json`` has a calibration, with
  its temperature) and ROC AUC, against the frame labels of ``<split>.csv``;
* per cine: the patient is positive when the generator gave it a visible tract (``<split>_patients.csv``); the
  cine's decision is reacquire iff any frame's probability ≥ threshold; its score for the AUC is the highest frame
  probability (the deciding frame's). Sensitivity, specificity, accuracy and AUC, with percentile-bootstrap 95 %
  intervals over patients (2000 resamples).

    nice -n 10 .venv/bin/python benchmarks/cmr_series_quality.py --model models/checkpoints/cmr-lvot \\
        --data data/lvot --split test --out benchmarks/results/cmr_series_quality.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.checkpoint import load_checkpoint
from models.classification import classification_accuracy, roc_auc
from models.datasets import load_gray, read_split
from models.imaging.grid import preprocess_batch

BOOTSTRAP_RESAMPLES = 2000


def frame_probabilities(model: torch.nn.Module, meta, paths: list[Path], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(paths), batch_size):
        x = preprocess_batch(
            [load_gray(p) for p in paths[start : start + batch_size]], meta.input_size, meta.mean, meta.std
        )
        with torch.no_grad():
            logits = model(x).float() / meta.temperature
        out.append(torch.softmax(logits, dim=1)[:, meta.positive_index].numpy())
    return np.concatenate(out)


def rates(labels: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
    positives, negatives = labels == 1, labels == 0
    return {
        "sensitivity": float(decisions[positives].mean()) if positives.any() else float("nan"),
        "specificity": float((~decisions[negatives]).mean()) if negatives.any() else float("nan"),
        "accuracy": float((decisions == positives).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "checkpoints" / "cmr-lvot")
    p.add_argument("--data", type=Path, default=REPO / "data" / "lvot")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cmr_series_quality.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    checkpoint = load_checkpoint(args.model)
    model, meta = checkpoint.model, checkpoint.meta
    threshold = meta.decision_threshold
    samples = read_split(args.data, args.split)
    probabilities = frame_probabilities(model, meta, [s.image_path for s in samples], args.batch_size)
    frame_labels = np.array([s.label for s in samples])

    with open(args.data / f"{args.split}_frames.csv", newline="") as f:
        patient_of = {row["image_name"]: row["patient_id"] for row in csv.DictReader(f)}
    with open(args.data / f"{args.split}_patients.csv", newline="") as f:
        patient_label = {row["patient_id"]: int(row["label"]) for row in csv.DictReader(f)}
    per_patient: dict[str, list[float]] = defaultdict(list)
    for sample, probability in zip(samples, probabilities):
        name = sample.image_path.resolve().relative_to(args.data.resolve()).as_posix()
        per_patient[patient_of[name]].append(float(probability))
    patients = sorted(per_patient)
    labels = np.array([patient_label[pid] for pid in patients])
    scores = np.array([max(per_patient[pid]) for pid in patients])
    decisions = scores >= threshold

    rng = np.random.default_rng(args.seed)
    boot: dict[str, list[float]] = defaultdict(list)
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(0, len(patients), len(patients))
        for key, value in rates(labels[pick], decisions[pick]).items():
            boot[key].append(value)
        auc = roc_auc(labels[pick], scores[pick])
        if auc is not None:
            boot["auc"].append(auc)
    series = {**rates(labels, decisions), "auc": roc_auc(labels, scores)}
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": f"{meta.name} {meta.version}",
        "calibration": meta.calibration.version if meta.calibration is not None else None,
        "threshold": threshold,
        "data": f"{args.data.as_posix()} split {args.split}",
        "frames": {
            "n": len(samples),
            "positives": int(frame_labels.sum()),
            "accuracy": classification_accuracy(frame_labels, probabilities, threshold),
            "auc": roc_auc(frame_labels, probabilities),
        },
        "cines": {
            "n": len(patients),
            "positives": int(labels.sum()),
            **{
                key: {
                    "value": value,
                    "ci95": [float(np.nanpercentile(boot[key], 2.5)), float(np.nanpercentile(boot[key], 97.5))],
                }
                for key, value in series.items()
            },
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
