"""Pointing Game of the model-free controls on generator v2 and on the held-out style (issue 15, item 2).

No model takes part: each control map (:mod:`models.controls`: white top-hat, brightest pixel, image centre; and
the seeded uniform-noise ``random`` map of :mod:`models.evaluation`) is computed on the image resized to the model
grid exactly as the model sees it (:func:`models.imaging.grid.resize_unit`), and scored with the Pointing Game of
:mod:`models.pointing_game`: hit iff the map's argmax lies within τ grid pixels of the nearest ground-truth box
(boxes scaled to the grid), τ = ``--tau-rel`` × grid side (0.025: the papers' 15 px at 600 px). Images without a
box are left out. 95 % confidence intervals: percentile bootstrap over the scored images (2000 resamples).

    .venv/bin/python benchmarks/synth_v2_controls.py --v2 data/synth-v2-test --heldout data/synth-heldout-test \
        --v1 data/synth-v1-test --generate --n 1100 --size 640 --seed 2 --out benchmarks/results/synth_v2_controls.json
    .venv/bin/python benchmarks/synth_v2_controls.py --v2 data/synth-v2-train --split dev --sweep   # top-hat sizes

``--generate`` writes the data sets first (``python -m models.synth --style v2|heldout|v1``) unless their CSV
exists; ``--v1 ROOT`` adds the first generator's look for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.controls import TOPHAT_ELEMENT_FRACTION, brightest_map, centre_map, random_control_maps, tophat_map
from models.datasets import load_gray, read_split
from models.imaging.grid import original_box_to_grid, resize_unit
from models.pointing_game import (
    BOOTSTRAP_RESAMPLES,
    PointingGameResult,
    argmax_point,
    bootstrap_ci,
    pointing_game_hit,
)


def load_positives(root: Path, split: str, grid: int) -> tuple[list[str], torch.Tensor, list[list[tuple[float, ...]]]]:
    """Positive images of a split on the grid ([N, grid, grid] in [0, 1]) and their boxes in grid pixels."""
    keys, images, boxes = [], [], []
    for sample in read_split(root, split):
        if not sample.annotations:
            continue
        gray = load_gray(sample.image_path)
        keys.append(sample.image_path.name)
        images.append(resize_unit(gray, (grid, grid)))
        boxes.append([original_box_to_grid(b, gray.shape, (grid, grid)) for b in sample.boxes])
    return keys, torch.stack(images), boxes


def score(maps: torch.Tensor, boxes: list[list[tuple[float, ...]]], tau: float) -> list[bool]:
    out = []
    for m, b in zip(maps, boxes):
        hit = pointing_game_hit(argmax_point(m), b, tau)
        assert hit is not None
        out.append(hit)
    return out


def control_maps(grid: int, seed: int) -> dict[str, Callable[[list[str], torch.Tensor], torch.Tensor]]:
    return {
        "control-tophat": lambda keys, x: tophat_map(x),
        "control-brightest": lambda keys, x: brightest_map(x),
        "control-centre": lambda keys, x: centre_map(x),
        "random": lambda keys, x: random_control_maps(keys, "no-model", (grid, grid), seed),
    }


def evaluate_split(root: Path, split: str, grid: int, tau: float, seed: int) -> dict[str, dict[str, float | int]]:
    start = time.perf_counter()
    keys, images, boxes = load_positives(root, split, grid)
    rows: dict[str, dict[str, float | int]] = {}
    for name, make in control_maps(grid, seed).items():
        outcomes = []
        for i in range(0, len(keys), 64):
            outcomes += score(make(keys[i : i + 64], images[i : i + 64]), boxes[i : i + 64], tau)
        result = PointingGameResult.from_outcomes(outcomes)
        lo, hi = bootstrap_ci(outcomes, seed=seed)
        rows[name] = {
            "pointing_game": result.accuracy or 0.0,
            "hits": result.hits,
            "n": result.n,
            "ci95_low": lo,
            "ci95_high": hi,
        }
    print(f"  {root} ({split}): {len(keys)} positives in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return rows


def sweep_tophat(root: Path, split: str, grid: int, tau: float) -> dict[str, float]:
    keys, images, boxes = load_positives(root, split, grid)
    out = {}
    for fraction in (0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16):
        outcomes = []
        for i in range(0, len(keys), 64):
            outcomes += score(tophat_map(images[i : i + 64], fraction), boxes[i : i + 64], tau)
        out[f"{fraction:.2f}"] = float(np.mean(outcomes))
        print(f"  top-hat disk {fraction:.2f} × side: PG {out[f'{fraction:.2f}']:.3f} ({len(outcomes)} images)")
    return out


def _generate(root: Path, style: str, n: int, size: int, seed: int, split: str, workers: int) -> None:
    if (root / f"{split}.csv").is_file():
        return
    from models.synth import generate

    counts = {"train": 0, "dev": 0, "test": 0, split: n}
    start = time.perf_counter()
    generate(
        root,
        counts["train"],
        counts["dev"],
        counts["test"],
        size=size,
        seed=seed,
        fmt="mixed",
        workers=workers,
        style=style,
    )
    seconds = time.perf_counter() - start
    print(f"  generated {n} {style} images in {seconds:.1f} s ({n / seconds:.1f} images/s)", file=sys.stderr)


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--v2", required=True, help="generator v2 data set root (Object-CXR layout)")
    p.add_argument("--heldout", default=None, help="held-out-style data set root")
    p.add_argument("--v1", default=None, help="generator v1 data set root (for comparison: the old look)")
    p.add_argument("--split", default="test")
    p.add_argument("--grid", type=int, default=256, help="model grid side (the shipped model's: 256)")
    p.add_argument("--tau-rel", type=float, default=0.025, help="tolerance as a fraction of the grid side")
    p.add_argument("--seed", type=int, default=2, help="generation seed and the random control's seed")
    p.add_argument("--generate", action="store_true", help="write the data sets first if they are missing")
    p.add_argument("--n", type=int, default=1100, help="images per generated split")
    p.add_argument("--size", type=int, default=640, help="long side of generated images")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--sweep", action="store_true", help="only sweep the top-hat's disk size on --v2")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    tau = args.tau_rel * args.grid
    roots = {"v2": Path(args.v2)}
    roots |= {style: Path(root) for style, root in (("heldout", args.heldout), ("v1", args.v1)) if root}
    if args.generate:
        for style, root in roots.items():
            _generate(root, style, args.n, args.size, args.seed, args.split, args.workers)
    if args.sweep:
        return {"sweep": sweep_tophat(roots["v2"], args.split, args.grid, tau)}
    results: dict[str, object] = {
        "grid": args.grid,
        "tau_px": tau,
        "tau_rel": args.tau_rel,
        "split": args.split,
        "tophat_element_fraction": TOPHAT_ELEMENT_FRACTION,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "data": {k: str(v) for k, v in roots.items()},
        "styles": {style: evaluate_split(root, args.split, args.grid, tau, args.seed) for style, root in roots.items()},
    }
    print(f"Pointing Game of model-free controls, τ = {tau:g} px on a {args.grid} grid ({args.tau_rel:g} of the side)")
    print(f"{'method':<20}" + "".join(f"{style:>28}" for style in roots))
    for name in ("control-tophat", "control-brightest", "control-centre", "random"):
        cells = []
        for style in roots:
            r = results["styles"][style][name]  # type: ignore[index]
            cells.append(f"{r['pointing_game']:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}] n={r['n']}")
        print(f"{name:<20}" + "".join(f"{c:>28}" for c in cells))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
