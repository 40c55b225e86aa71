"""Example images of the shipped default's failure modes, for docs/model-card.md (a benchmark, not a test).

From the first ``--n`` positives and ``--n`` negatives of a split (file order), the shipped checkpoint's
calibrated probability and NormGrad conv1x1-combined map (target = the positive class, on the model grid) are
computed in batches; the figure shows, one row each, the positives whose map's argmax misses every box by more
than τ (``tau_rel`` × grid side, the Pointing Game), the positives below the threshold (missed objects) and the
negatives at or above it (false alarms, highest probability first). Boxes green, argmax red.

    .venv/bin/python benchmarks/default_failure_examples.py --data data/normgate-v2/v2-test \\
        --out docs/default-failures.png --n 120
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.checkpoint import load_checkpoint
from models.datasets import Sample, load_gray, read_split
from models.imaging.grid import original_box_to_grid, preprocess_batch, resize_unit
from models.pointing_game import argmax_point, pointing_game_hit
from models.saliency import explain_with_logits


def score(samples: list[Sample], checkpoint_dir: Path, batch_size: int) -> list[dict]:
    checkpoint = load_checkpoint(checkpoint_dir)
    meta = checkpoint.meta
    grid = tuple(meta.input_size)
    temperature = meta.calibration.temperature if meta.calibration else 1.0
    threshold = meta.calibration.threshold if meta.calibration else meta.threshold
    tau = meta.tau_rel * grid[0]
    rows = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        grays = [load_gray(s.image_path) for s in batch]
        x = preprocess_batch(grays, grid, meta.mean, meta.std)
        maps, logits = explain_with_logits(
            checkpoint.model, x, "normgrad-conv1x1-combined", target=meta.positive_index, layers=meta.normgrad_layers
        )
        probs = torch.softmax(logits / temperature, dim=1)[:, meta.positive_index]
        for sample, gray, heat, prob in zip(batch, grays, maps, probs, strict=True):
            point = argmax_point(heat)
            boxes = [original_box_to_grid(b, gray.shape, grid) for b in sample.boxes]
            rows.append(
                {
                    "sample": sample,
                    "unit": resize_unit(gray, grid).numpy(),
                    "map": heat.numpy(),
                    "point": point,
                    "boxes": boxes,
                    "probability": float(prob),
                    "reacquire": float(prob) >= threshold,
                    "hit": pointing_game_hit(point, boxes, tau) if boxes else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/checkpoints/default"))
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=120, help="positives and negatives each (file order)")
    p.add_argument("--per-row", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("docs/default-failures.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    samples = read_split(args.data, args.split)
    positives = [s for s in samples if s.label == 1 and s.annotations][: args.n]
    negatives = [s for s in samples if s.label == 0][: args.n]
    rows = score(positives + negatives, args.checkpoint, args.batch_size)
    pos, neg = rows[: len(positives)], rows[len(positives) :]
    kinds = {
        "pointing miss (object found, map elsewhere)": [r for r in pos if r["hit"] is False and r["reacquire"]],
        "missed object (below threshold)": [r for r in pos if not r["reacquire"]],
        "false alarm (negative at/above threshold)": sorted(
            (r for r in neg if r["reacquire"]), key=lambda r: -r["probability"]
        ),
    }
    for name, found in kinds.items():
        total = len(pos) if "negative" not in name else len(neg)
        print(f"{name}: {len(found)} of {total}")
    fig, axes = plt.subplots(len(kinds), args.per_row, figsize=(3 * args.per_row, 3.3 * len(kinds)))
    for r_index, (name, found) in enumerate(kinds.items()):
        for c_index in range(args.per_row):
            ax = axes[r_index][c_index]
            ax.axis("off")
            if c_index >= len(found):
                continue
            row = found[c_index]
            heat = row["map"] / max(float(row["map"].max()), 1e-12)
            ax.imshow(row["unit"], cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.ma.masked_less(heat, 0.25), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            for x1, y1, x2, y2 in row["boxes"]:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.2))
            ax.plot(*row["point"], marker="x", color="red", markersize=9, markeredgewidth=2)
            ax.set_title(f"{row['sample'].image_path.name}\np = {row['probability']:.2f}", fontsize=8)
        axes[r_index][0].text(
            -0.05, 0.5, name, transform=axes[r_index][0].transAxes, rotation=90, va="center", ha="right", fontsize=9
        )
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
