"""``python -m models.synth.cmr.centre_control --data ROOT --split test --grid 160``: the centre prior's Pointing Game.

A "saliency map" that is a centred Gaussian on the model grid points at the grid's centre whatever the image
shows. Its Pointing Game (Zhang et al., ECCV 2016; ``models.pointing_game``) says how much of a method's score a
centre bias alone would earn: on a 4-chamber view the outflow tract lies near the middle of the field of view.
The map is scored exactly as ``service.evaluate`` scores a method: argmax on the ``grid`` × ``grid`` model input
(``models.pointing_game.argmax_point``; a centred Gaussian on an even grid has four tied maxima and the first in
row-major order wins), boxes scaled from original pixels to the grid (``models.imaging.grid.original_box_to_grid``),
hit when the distance to the nearest box is at most τ grid pixels. Images without a box are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.datasets import DatasetError, Sample, read_split
from models.imaging.grid import original_box_to_grid
from models.pointing_game import PointingGameResult, argmax_point, pointing_game_hit

PAPER_TOLERANCE = 15.0 / 224.0  # τ = 15 px on the 2023 paper's 224 × 224 LVOT grid
TIGHT_TOLERANCE = 0.025


def centred_gaussian(grid: int, sigma_fraction: float = 0.25) -> npt.NDArray[np.float64]:
    """A Gaussian centred on the grid (pixel-centre coordinates), σ = ``sigma_fraction`` of the side."""
    c = (grid - 1) / 2.0
    axis = np.arange(grid, dtype=np.float64) - c
    sigma = sigma_fraction * grid
    g: npt.NDArray[np.float64] = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma * sigma))
    return g


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header."""
    with Image.open(path) as im:
        return im.height, im.width


def centre_control(samples: Sequence[Sample], grid: int, taus: Sequence[float]) -> list[PointingGameResult]:
    """Pointing Game of the centred Gaussian for each tolerance τ (grid pixels) over the samples with a box."""
    point = argmax_point(centred_gaussian(grid))
    outcomes: list[list[bool | None]] = [[] for _ in taus]
    for s in samples:
        if not s.boxes:
            continue
        hw = image_size(s.image_path)
        boxes = [original_box_to_grid(b, hw, (grid, grid)) for b in s.boxes]
        for k, tau in enumerate(taus):
            outcomes[k].append(pointing_game_hit(point, boxes, tau))
    return [PointingGameResult.from_outcomes(o) for o in outcomes]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.synth.cmr.centre_control", description=__doc__)
    ap.add_argument("--data", required=True, help="data set root (ROOT/<split>.csv)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--grid", type=int, required=True, help="side of the square model input grid, pixels")
    ap.add_argument(
        "--tau-rel",
        default=f"{PAPER_TOLERANCE:.4f},{TIGHT_TOLERANCE}",
        help="tolerances as fractions of the grid side, comma-separated (default: the paper's 15/224, and 0.025)",
    )
    args = ap.parse_args(argv)
    try:
        samples = read_split(args.data, args.split)
        fractions = [float(t) for t in args.tau_rel.split(",") if t.strip()]
    except (DatasetError, ValueError) as exc:
        print(f"centre_control: error: {exc}", file=sys.stderr)
        return 2
    taus = [f * args.grid for f in fractions]
    results = centre_control(samples, args.grid, taus)
    report: dict[str, Any] = {
        "data": str(args.data),
        "split": args.split,
        "grid": args.grid,
        "point": list(argmax_point(centred_gaussian(args.grid))),
        "results": [
            {"tau_rel": f, "tau_px": round(tau, 3), "hits": r.hits, "n": r.n, "pointing_game": r.accuracy}
            for f, tau, r in zip(fractions, taus, results)
        ],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
