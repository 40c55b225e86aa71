"""Does the model's explanation beat image processing? NormGrad and Grad-CAM next to the model-free controls.

Issue 15's must-show table: the Pointing Game of ``control-tophat``, ``control-brightest``, ``control-centre``,
``normgrad-conv1x1-combined``, ``gradcam`` and ``random`` at the relative tolerance (τ = ``tau_rel`` × grid side;
default the checkpoint's model.json ``tau_rel``, 0.025 for the chest task = the papers' 15 px at 600 px), on the
generator v2 test split and on the held-out style, with 95 % bootstrap intervals (2000 resamples of the images)
and n. It also prints the classifier's ROC AUC on the same images and the margin of NormGrad over the best control
with a paired bootstrap interval (both maps scored on the same images).

Everything runs through the evaluation engine of ``python -m service.evaluate`` (models/evaluation.py): the same
preprocessing, target (the positive class), argmax rule and box scaling. The controls see the unit-range image on
the model grid, never the model.

    nice -n 10 .venv/bin/python benchmarks/explanation_controls.py --checkpoint models/checkpoints/default \\
        --data v2=data/synth-v2-test --data heldout=data/synth-heldout-test [--n-positives 300] \\
        --threads 1 --out benchmarks/results/explanation_controls.json

``--n-positives N`` takes the first N images with a box (file order) and as many negatives (for the AUC); the
default takes the whole split. The test sets are those of docs/data.md ("Model-free controls": 1100 images, 640
px, seed 2, ``python -m models.synth --style v2|heldout``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.classification import roc_auc
from models.datasets import Sample, read_split
from models.evaluation import CONTROL_METHODS, EvaluationConfig, evaluate, load_models
from models.metadata import portable_command
from models.pointing_game import (
    BOOTSTRAP_RESAMPLES,
    PointingGameResult,
    bootstrap_ci,
    paired_bootstrap_difference_ci,
)

METHODS = (
    "normgrad-conv1x1-combined",
    "gradcam",
    "control-tophat",
    "control-brightest",
    "control-centre",
    "random",
)
HEADLINE = "normgrad-conv1x1-combined"


def pick_samples(samples: list[Sample], n_positives: int | None) -> list[Sample]:
    """The first ``n`` images with a box and the first ``n`` without (file order); all when ``n`` is None."""
    if n_positives is None:
        return samples
    positives = [s for s in samples if s.label == 1 and s.annotations]
    negatives = [s for s in samples if not (s.label == 1 and s.annotations)]
    return positives[:n_positives] + negatives[:n_positives]


def evaluate_style(
    root: Path, split: str, checkpoint: str, config: EvaluationConfig, n_positives: int | None, seed: int
) -> dict[str, Any]:
    started = time.perf_counter()
    samples = pick_samples(read_split(root, split), n_positives)
    models = load_models([checkpoint])
    rows = [row for _, batch in evaluate(samples, models, config, root=root) for row in batch]
    by_method: dict[str, list[bool]] = {m: [] for m in config.methods}
    labels: dict[str, tuple[int, float]] = {}
    for row in sorted(rows, key=lambda r: (r.method, r.image)):
        labels[row.image] = (row.label, row.probability)
        if row.hit is not None:
            by_method[row.method].append(bool(row.hit))
    out: dict[str, Any] = {"methods": {}}
    for method, outcomes in by_method.items():
        result = PointingGameResult.from_outcomes(outcomes)
        low, high = bootstrap_ci(outcomes, seed=seed)
        out["methods"][method] = {
            "pointing_game": result.accuracy,
            "hits": result.hits,
            "n": result.n,
            "ci95_low": low,
            "ci95_high": high,
            "control": method in CONTROL_METHODS,
        }
    controls = [m for m in config.methods if m in CONTROL_METHODS]
    best_control = max(controls, key=lambda m: out["methods"][m]["pointing_game"] or 0.0)
    difference, low, high = paired_bootstrap_difference_ci(by_method[HEADLINE], by_method[best_control], seed=seed)
    out["margin_over_best_control"] = {
        "method": HEADLINE,
        "best_control": best_control,
        "difference": difference,
        "ci95_low": low,
        "ci95_high": high,
    }
    label_list = [v[0] for v in labels.values()]
    out["classification"] = {
        "auc": roc_auc(label_list, [v[1] for v in labels.values()]) if 0 < sum(label_list) < len(label_list) else None,
        "images": len(labels),
        "positives": int(sum(label_list)),
    }
    tau_rel, tau_px = config.tolerance_for(models[0].meta)
    out.update(tau_rel=tau_rel, tau_px=tau_px, grid=list(models[0].meta.input_size))
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(f"  {root} ({split}): {len(samples)} images in {out['seconds']} s", file=sys.stderr)
    return out


def print_table(results: dict[str, Any]) -> None:
    styles = list(results["styles"])
    first = results["styles"][styles[0]]
    print(
        f"Pointing Game at τ = {100 * first['tau_rel']:.3g} % of the side = {first['tau_px']:.3g} px on the "
        f"{first['grid'][0]}×{first['grid'][1]} grid; 95 % bootstrap CI; n = images with a box"
    )
    print(f"checkpoint {results['checkpoint']}")
    print(f"{'method':<28}" + "".join(f"{style:>44}" for style in styles))
    for method in METHODS:
        cells = []
        for style in styles:
            r = results["styles"][style]["methods"][method]
            cells.append(f"{r['pointing_game']:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}] n={r['n']}")
        label = f"{method} (control)" if method in CONTROL_METHODS else method
        print(f"{label:<28}" + "".join(f"{c:>44}" for c in cells))
    cells = []
    for style in styles:
        m = results["styles"][style]["margin_over_best_control"]
        cells.append(f"{m['difference']:+.3f} [{m['ci95_low']:+.3f}, {m['ci95_high']:+.3f}] vs {m['best_control']}")
    print(f"{'NormGrad − best control':<28}" + "".join(f"{c:>44}" for c in cells))
    aucs = [results["styles"][style]["classification"]["auc"] for style in styles]
    print(f"{'classifier ROC AUC':<28}" + "".join(f"{'–' if a is None else f'{a:.3f}':>44}" for a in aucs))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.json + model.safetensors)")
    p.add_argument(
        "--data", action="append", required=True, help="STYLE=ROOT (repeatable), e.g. v2=… heldout=… (test split)"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--tau-rel", type=float, default=None, help="default: the checkpoint's model.json tau_rel")
    p.add_argument("--n-positives", type=int, default=None, help="first N positives + N negatives per style")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="random control and bootstrap seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/explanation_controls.json")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    styles: dict[str, Path] = {}
    for item in args.data:
        style, sep, root = item.partition("=")
        if not sep or not style or not root:
            p.error(f"--data takes STYLE=ROOT, got {item!r}")
        styles[style] = Path(root)
    config = EvaluationConfig(methods=METHODS, tau_rel=args.tau_rel, batch_size=args.batch_size, seed=args.seed)
    results: dict[str, Any] = {
        "checkpoint": Path(args.checkpoint).name,
        "split": args.split,
        "n_positives_limit": args.n_positives,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "command": "python benchmarks/explanation_controls.py " + portable_command(argv),
        "styles": {
            style: evaluate_style(root, args.split, args.checkpoint, config, args.n_positives, args.seed)
            for style, root in styles.items()
        },
    }
    print_table(results)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
