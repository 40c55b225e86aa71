"""Before/after of each hot-spot fix the load profile led to (issue 8; a benchmark, not a test).

In one process, interleaved repetition by repetition (a busy shared machine slows both sides alike):

* ``decode``  — a 16-bit 2500 × 3000 DICOM through ``models.imaging.decode.decode_image``: the per-pixel float64
  pipeline (forced) vs the per-stored-value table (the default path now); same output checked;
* ``png``     — a 320 × 320 heatmap to PNG at Pillow's default zlib level 6 vs level 1 (now);
* ``model``   — the worker's model step for a batch of B: a separate inference forward for the logits + the
  explanation's forward and cut backward (before) vs the explanation alone, logits read off its forward
  (now); the logits are checked equal;
* ``look-up`` — the table look-up of the stored values: one fancy index of the whole image (before) vs
  ``np.take`` in 16-row strips (now); same output checked;
* ``resize``  — the antialiased resize of the decoded image to the grid: with the clipped copy of the image
  (before) vs a range check and no copy (now); same output checked.

    .venv/bin/python benchmarks/hot_spots.py --models-dir artifacts/bench/models --reps 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "load_tests")]

import numpy as np
import torch
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=REPO / "models" / "checkpoints")
    p.add_argument("--model", default="default")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hot_spots.json")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)

    from images import dicom_bytes, radiograph

    import models.imaging.decode as decode_module
    from models import load_checkpoint
    from models.imaging.grid import preprocess_batch
    from models.imaging.limits import DecodeLimits
    from service.observability.metrics import ServiceMetrics
    from service.serving.worker import ModelRunner

    body = dicom_bytes(radiograph(2500, 3000, 0), 0)
    limits = DecodeLimits(max_pixels=60_000_000)
    checkpoint = load_checkpoint(args.models_dir / args.model)
    runner = ModelRunner("default", checkpoint.model, checkpoint.meta, torch.device("cpu"), ServiceMetrics())
    meta = checkpoint.meta
    decoded = decode_module.decode_image(body, "application/dicom", limits)
    grid = preprocess_batch([decoded.pixels] * 4, meta.input_size, meta.mean, meta.std)
    heatmap = torch.nn.functional.interpolate(torch.rand(1, 1, 10, 10), size=tuple(meta.input_size), mode="bilinear")[
        0, 0
    ].numpy()

    def decode(per_pixel: bool):
        saved = decode_module._TABLE_MIN_PIXELS
        decode_module._TABLE_MIN_PIXELS = 1 << 62 if per_pixel else saved
        try:
            return decode_module.decode_image(body, "application/dicom", limits).pixels
        finally:
            decode_module._TABLE_MIN_PIXELS = saved

    def png(level: int) -> bytes:
        scaled = np.rint((heatmap - heatmap.min()) * (255.0 / np.ptp(heatmap))).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(scaled, mode="L").save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    def model_two_pass(x):
        with torch.inference_mode():
            logits = runner.model(x)
        from models import saliency

        target = torch.full((x.shape[0],), meta.positive_index, dtype=torch.long)
        return saliency.explain(runner.model, x, runner_method, target=target, layers=meta.normgrad_layers), logits

    def resize(clip_copy: bool):
        pixels = np.clip(decoded.pixels, 0.0, 1.0) if clip_copy else decoded.pixels
        return preprocess_batch([pixels], meta.input_size, meta.mean, meta.std)

    stored = (radiograph(2500, 3000, 0) >> 4).astype(np.uint16)
    table = np.random.default_rng(0).random(1 << 16, dtype=np.float32)

    runner_method = "normgrad-conv1x1-combined"
    assert np.array_equal(table[stored], decode_module._look_up_in_strips(table, stored))
    assert torch.equal(resize(True), resize(False))
    assert np.array_equal(decode(True), decode(False)), "table decode differs from the per-pixel pipeline"
    for b in (1, 4):
        maps_before, logits_before = model_two_pass(grid[:b])
        maps_after, logits_after = runner._explain(grid[:b], runner_method)
        assert torch.equal(logits_before, logits_after) and torch.equal(maps_before, maps_after)

    pairs = {
        "decode 16-bit DICOM 2500x3000": (lambda: decode(True), lambda: decode(False)),
        "heatmap PNG 320x320": (lambda: png(6), lambda: png(1)),
        "model step B=1": (lambda: model_two_pass(grid[:1]), lambda: runner._explain(grid[:1], runner_method)),
        "model step B=4": (lambda: model_two_pass(grid[:4]), lambda: runner._explain(grid[:4], runner_method)),
        "table look-up 2500x3000": (lambda: table[stored], lambda: decode_module._look_up_in_strips(table, stored)),
        "resize to grid": (lambda: resize(True), lambda: resize(False)),
    }
    rows = {}
    for name, (before, after) in pairs.items():
        before()
        if after:
            after()
        tb, ta = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            before()
            tb.append(1000 * (time.perf_counter() - t0))
            if after:
                t0 = time.perf_counter()
                after()
                ta.append(1000 * (time.perf_counter() - t0))
        mb = statistics.median(tb)
        ma = statistics.median(ta) if ta else None
        rows[name] = {
            "before_ms": round(mb, 1),
            "after_ms": None if ma is None else round(ma, 1),
            "speed-up": None if ma is None else round(mb / ma, 2),
        }
        print(
            f"{name:<32} before {mb:8.1f} ms  after {'' if ma is None else f'{ma:8.1f} ms'}"
            f"  {'' if ma is None else f'x{mb / ma:.2f}'}",
            flush=True,
        )
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch_threads": args.torch_threads,
        "reps": args.reps,
        "png_bytes": {"level 6": len(png(6)), "level 1": len(png(1))},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
