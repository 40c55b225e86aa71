"""``python -m models.synth``: write a synthetic Object-CXR-layout data set (see models/synth/writer.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from models.synth.styles import DEFAULT_STYLE, STYLES
from models.synth.writer import FORMATS, generate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.synth", description=__doc__)
    ap.add_argument("--out", required=True, help="output folder (ROOT of the Object-CXR layout)")
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-dev", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1024, help="long side of every image in pixels (default 1024)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="png",
        help="png (8-bit, default), png16 (16-bit), jpg, or mixed (8- or 16-bit PNG drawn per image)",
    )
    ap.add_argument(
        "--style",
        choices=STYLES,
        default=DEFAULT_STYLE,
        help="v2 (default): Object-CXR's annotation rule; heldout: the independent renderer, for testing only; "
        "v1: the first generator (objects anywhere, all annotated), for comparison",
    )
    ap.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    ap.add_argument(
        "--lung-masks",
        choices=["auto", "v7", "procedural"],
        default="auto",
        help="lung shapes: the V7 Labs masks from torchxrayvision if installed (auto), or drawn",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = generate(
            args.out,
            args.n_train,
            args.n_dev,
            args.n_test,
            size=args.size,
            seed=args.seed,
            fmt=args.format,
            workers=args.workers,
            lung_masks=args.lung_masks,
            progress=not args.quiet,
            style=args.style,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"models.synth: error: {exc}", file=sys.stderr)
        return 2
    total = args.n_train + args.n_dev + args.n_test
    seconds = time.perf_counter() - start
    if not args.quiet:
        print(json.dumps(summary["splits"], indent=2))
        print(f"{total} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} images/s) → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
