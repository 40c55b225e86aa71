"""Generation speed of ``python -m models.synth`` per rendering style, in one process (docs/data.md).

For each style, ``generate(..., workers=1)`` writes ``--n`` training images at ``--size`` in ``--format`` (PNG
encoding and the CSV included) into a temporary folder; the script reports wall seconds and the process's CPU
seconds (``time.process_time``: every thread of this process, none of the other jobs on a shared machine). The
V7 lung masks, which a process decodes lazily the first time it draws each one, are decoded beforehand and
timed on their own, so the per-image numbers are the steady state of a long run. Two images per style are
generated first and not counted (imports, caches).

    .venv/bin/python benchmarks/synth_speed.py --n 100 --size 640 --out benchmarks/results/synth_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.synth import generate
from models.synth.lungs import default_bank
from models.synth.styles import STYLES


def decode_all_masks() -> dict[str, float | int | str]:
    """Decode every lung mask of the process's default bank once; wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    bank = default_bank("auto")
    clean = bank.decode_all()
    return {
        "source": bank.source,
        "clean_masks": clean,
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
    }


def time_style(style: str, n: int, size: int, fmt: str) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as warm:
        generate(warm, 2, 0, 0, size=size, seed=5, fmt=fmt, workers=1, style=style, progress=False)
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        generate(out, n, 0, 0, size=size, seed=0, fmt=fmt, workers=1, style=style, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "images": n,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_image": round(1000.0 * cpu / n, 1),
        "images_per_cpu_s": round(n / cpu, 2),
        "images_per_wall_s": round(n / wall, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="images per style")
    p.add_argument("--size", type=int, default=640, help="long side in pixels")
    p.add_argument("--format", default="mixed", help="png, png16, jpg or mixed")
    p.add_argument("--styles", default=",".join(STYLES), help="comma-separated styles")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    results: dict[str, object] = {
        "size": args.size,
        "format": args.format,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "lung_masks": decode_all_masks(),
    }
    styles: dict[str, dict[str, float | int]] = {}
    for style in args.styles.split(","):
        styles[style] = time_style(style, args.n, args.size, args.format)
        r = styles[style]
        print(
            f"{style:>8}: {r['cpu_ms_per_image']:.0f} ms CPU per image ({r['images_per_cpu_s']:.1f} images per CPU-s),"
            f" {r['images_per_wall_s']:.1f} images/s wall"
        )
    results["styles"] = styles
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    masks = results["lung_masks"]
    assert isinstance(masks, dict)
    print(
        f"lung masks ({masks['source']}, {masks['clean_masks']} clean): {masks['cpu_s']} s CPU to decode, once per process"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
