"""``python -m models.synth.cmr``: write a synthetic 4-chamber cine LVOT data set (see models/synth/cmr/writer.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from models.synth.cmr.patient import FRAMES_MAX, FRAMES_MIN, PatientError
from models.synth.cmr.writer import FORMATS, SPLITS, generate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.synth.cmr", description=__doc__)
    ap.add_argument("--out", required=True, help="output folder (ROOT of the Object-CXR layout)")
    ap.add_argument("--patients-train", type=int, default=240)
    ap.add_argument("--patients-dev", type=int, default=40)
    ap.add_argument("--patients-test", type=int, default=70)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames-min", type=int, default=FRAMES_MIN, help=f"fewest frames per cine (default {FRAMES_MIN})")
    ap.add_argument("--frames-max", type=int, default=FRAMES_MAX, help=f"most frames per cine (default {FRAMES_MAX})")
    ap.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="png16",
        help="png16 (16-bit, the 12-bit values scaled to full range; default) or png (8-bit)",
    )
    ap.add_argument("--dicom", action="store_true", help="also write DICOM (Enhanced MR + classic MR series)")
    ap.add_argument(
        "--dicom-splits",
        default="test",
        help="comma-separated splits written as DICOM with --dicom (default: test)",
    )
    ap.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    dicom_splits = [s.strip() for s in args.dicom_splits.split(",") if s.strip()] if args.dicom else []
    start = time.perf_counter()
    try:
        summary = generate(
            args.out,
            args.patients_train,
            args.patients_dev,
            args.patients_test,
            seed=args.seed,
            frames_min=args.frames_min,
            frames_max=args.frames_max,
            fmt=args.format,
            dicom_splits=dicom_splits,
            workers=args.workers,
            progress=not args.quiet,
        )
    except (ValueError, PatientError) as exc:
        print(f"models.synth.cmr: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    if not args.quiet:
        print(json.dumps(summary["splits"], indent=2))
        frames = sum(summary["splits"][s]["frames"] for s in SPLITS)
        print(f"{frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.1f} frames/s) → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
