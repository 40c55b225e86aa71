"""Held-out quality of a checkpoint: accuracy, ROC AUC and the NormGrad Pointing Game (docs/algorithms.md), standalone.

An independent cross-check of ``python -m service.evaluate`` for the model card: it uses only the checkpoint,
the data reader, the shared preprocessing and ``models.saliency.explain``, and its own hit test:

    hit ⇔ the distance from the saliency argmax p (model-grid pixel, x = column, y = row) to the nearest
          ground-truth box scaled to the model grid is ≤ τ (inside a box = distance 0);

images without a box are left out of the Pointing Game (Ozer et al. 2023 §4.2, τ = 15) but count for accuracy
and AUC. The target class of the explanation is the positive class (the ground truth of every scored image).

    .venv/bin/python benchmarks/default_model_quality.py --model models/checkpoints/default \
        --data data/synth-test --split test --out data/quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.checkpoint import load_checkpoint
from models.classification import classification_metrics
from models.datasets import load_gray, read_split
from models.imaging.grid import normalise, original_box_to_grid, resize_unit
from models.saliency import explain


def distance_point_to_box(px: float, py: float, box: tuple[float, float, float, float]) -> float:
    x1, y1, x2, y2 = box
    dx = max(x1 - px, 0.0, px - x2)
    dy = max(y1 - py, 0.0, py - y2)
    return math.hypot(dx, dy)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--method", default="normgrad-conv1x1-combined")
    p.add_argument("--tau", type=float, default=15.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)

    ck = load_checkpoint(args.model)
    meta = ck.meta
    grid = meta.input_size
    samples = read_split(args.data, args.split)
    if args.limit:
        samples = samples[: args.limit]
    t0 = time.perf_counter()
    labels, probs, hits, distances = [], [], [], []
    for i in range(0, len(samples), args.batch_size):
        chunk = samples[i : i + args.batch_size]
        grays = [load_gray(s.image_path) for s in chunk]
        x = normalise(torch.stack([resize_unit(g, grid) for g in grays]), meta.mean, meta.std)
        with torch.no_grad():
            prob = torch.softmax(ck.model(x), dim=1)[:, meta.positive_index]
        labels += [s.label for s in chunk]
        probs += prob.tolist()
        with_boxes = [k for k, s in enumerate(chunk) if s.boxes]
        if not with_boxes:
            continue
        maps = explain(ck.model, x[with_boxes], method=args.method, target=meta.positive_index)
        for k, sal in zip(with_boxes, maps):
            flat = int(torch.argmax(sal))
            py, px = divmod(flat, sal.shape[1])
            original_hw = grays[k].shape
            d = min(distance_point_to_box(px, py, original_box_to_grid(b, original_hw, grid)) for b in chunk[k].boxes)
            distances.append(d)
            hits.append(d <= args.tau)
        done = i + len(chunk)
        print(f"\r{done}/{len(samples)} images, PG so far {np.mean(hits):.3f}", end="", file=sys.stderr)
    print(file=sys.stderr)
    result = {
        "model": str(args.model),
        "data": str(args.data),
        "split": args.split,
        "method": args.method,
        "tau": args.tau,
        "grid": grid,
        "classification": classification_metrics(np.array(labels), np.array(probs), meta.threshold),
        "pointing_game": {
            "accuracy": float(np.mean(hits)) if hits else None,
            "hits": int(np.sum(hits)),
            "n": len(hits),
            "median_distance_px": float(np.median(distances)) if distances else None,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
