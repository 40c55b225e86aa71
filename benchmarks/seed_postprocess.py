"""What the papers' seed-code post-processing does to the Pointing Game (issue 15, item 6; docs/saliency.md).

Scores Grad-CAM and guided backpropagation with NormGate's maps (``postprocess="none"``) and with the seed code's
(``postprocess="seed"``: Grad-CAM from 8 bits with Lanczos, the positive part of guided backprop with a
99th-percentile clip; :mod:`models.saliency.postprocess`), each unsmoothed and smoothed (σ = 1), on the same
positive images, at the checkpoint's relative tolerance. NormGrad conv1x1-combined, which the option does not
touch, is the reference. Prints each cell with its 95 % bootstrap interval, the paired differences seed − none
and σ = 1 − σ = 0 (images resampled jointly) and where the maxima lie (mean row of the argmax on the grid: the seed maps' plateaus
send the argmax to the first pixel in row-major order, i.e. up).

    nice -n 10 .venv/bin/python benchmarks/seed_postprocess.py --checkpoint models/checkpoints/default \\
        --data data/synth-v2-test --n-positives 100 --threads 1 --out benchmarks/results/seed_postprocess.json

Everything runs through models/evaluation.py, as ``python -m service.evaluate --postprocess seed`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.datasets import read_split
from models.evaluation import EvaluationConfig, evaluate, load_models
from models.metadata import portable_command
from models.pointing_game import BOOTSTRAP_RESAMPLES, bootstrap_ci, paired_bootstrap_difference_ci

METHODS = ("gradcam", "guided-backprop", "normgrad-conv1x1-combined")
SIGMAS = (0.0, 1.0)
POSTPROCESS = ("none", "seed")


def run(
    root: Path, split: str, checkpoint: str, n_positives: int, batch_size: int, seed: int
) -> dict[tuple[str, str, float], dict[str, Any]]:
    """``{(postprocess, method, σ): {image: (hit, point_y)}}`` over the first ``n_positives`` images with a box."""
    samples = [s for s in read_split(root, split) if s.label == 1 and s.annotations][:n_positives]
    models = load_models([checkpoint])
    cells: dict[tuple[str, str, float], dict[str, Any]] = {}
    for postprocess in POSTPROCESS:
        config = EvaluationConfig(
            methods=METHODS, smooth_sigmas=SIGMAS, batch_size=batch_size, seed=seed, postprocess=postprocess
        )
        for _, batch in evaluate(samples, models, config, root=root):
            for row in batch:
                if row.hit is not None:
                    key = (postprocess, row.method, float(row.smooth_sigma))
                    cells.setdefault(key, {})[row.image] = (bool(row.hit), float(row.point_y))
    return cells


def summarise(cells: dict[tuple[str, str, float], dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    out = []
    for method in METHODS:
        for sigma in SIGMAS:
            none, seeded = cells[("none", method, sigma)], cells[("seed", method, sigma)]
            images = sorted(none)
            a = [seeded[i][0] for i in images]
            b = [none[i][0] for i in images]
            difference, low, high = paired_bootstrap_difference_ci(a, b, seed=seed)
            entry: dict[str, Any] = {"method": method, "sigma": sigma, "n": len(images)}
            for name, outcomes, points in (("none", b, none), ("seed", a, seeded)):
                ci = bootstrap_ci(outcomes, seed=seed)
                entry[name] = {
                    "pointing_game": float(np.mean(outcomes)),
                    "hits": int(sum(outcomes)),
                    "ci95": [ci[0], ci[1]],
                    "mean_argmax_row": float(np.mean([points[i][1] for i in images])),
                }
            entry["seed_minus_none"] = {"difference": difference, "ci95": [low, high]}
            out.append(entry)
    return out


def smoothing_effects(cells: dict[tuple[str, str, float], dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """σ = 1 minus σ = 0 on the same images, per post-processing and method: the papers' smoothing effect."""
    out = []
    for postprocess in POSTPROCESS:
        for method in METHODS:
            smoothed, raw = cells[(postprocess, method, 1.0)], cells[(postprocess, method, 0.0)]
            images = sorted(raw)
            difference, low, high = paired_bootstrap_difference_ci(
                [smoothed[i][0] for i in images], [raw[i][0] for i in images], seed=seed
            )
            out.append({"postprocess": postprocess, "method": method, "difference": difference, "ci95": [low, high]})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="data set root (Object-CXR layout)")
    p.add_argument("--split", default="test")
    p.add_argument("--n-positives", type=int, default=100, help="the first N images with a box (file order)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/seed_postprocess.json")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    cells = run(Path(args.data), args.split, args.checkpoint, args.n_positives, args.batch_size, args.seed)
    meta = load_models([args.checkpoint])[0].meta
    tau_rel, tau_px = EvaluationConfig(methods=METHODS).tolerance_for(meta)
    results: dict[str, Any] = {
        "checkpoint": Path(args.checkpoint).name,
        "tau_rel": tau_rel,
        "tau_px": tau_px,
        "grid": list(meta.input_size),
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "cells": summarise(cells, args.seed),
        "smoothing_sigma1_minus_sigma0": smoothing_effects(cells, args.seed),
        "seconds": round(time.perf_counter() - started, 1),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "command": "python benchmarks/seed_postprocess.py " + portable_command(argv),
    }
    print(
        f"Pointing Game at τ = {100 * tau_rel:.3g} % of the side = {tau_px:.3g} px on the {meta.input_size[0]} grid; "
        f"95 % bootstrap CI; mean argmax row in grid pixels ({results['seconds']} s)"
    )
    for c in results["cells"]:
        d = c["seed_minus_none"]
        print(
            f"{c['method']:<27} σ={c['sigma']:g} n={c['n']}  none {c['none']['pointing_game']:.3f} "
            f"[{c['none']['ci95'][0]:.3f}, {c['none']['ci95'][1]:.3f}] row {c['none']['mean_argmax_row']:.0f}  "
            f"seed {c['seed']['pointing_game']:.3f} [{c['seed']['ci95'][0]:.3f}, {c['seed']['ci95'][1]:.3f}] "
            f"row {c['seed']['mean_argmax_row']:.0f}  seed − none {d['difference']:+.3f} "
            f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        )
    for e in results["smoothing_sigma1_minus_sigma0"]:
        print(
            f"smoothing σ=1 − σ=0  {e['method']:<27} postprocess {e['postprocess']:<5} {e['difference']:+.3f} "
            f"[{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
