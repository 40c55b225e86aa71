"""Write a synthetic data set in the Object-CXR layout (docs/formats.md, "Data sets").

``OUT/train.csv``, ``OUT/dev.csv``, ``OUT/test.csv`` with header ``image_name,annotation`` and rows such as
``train/00012.png,1 210 305 236 331;0 90 120 130 170``; images under ``OUT/<split>/``. ``OUT/synth.json``
records the command's parameters and per-split counts. Same parameters → byte-identical files.

Formats: ``png`` (8-bit), ``png16`` (16-bit), ``jpg`` (quality 95), or ``mixed``: each image 8- or 16-bit PNG as
its own random draw says (part of generator v2's domain randomisation; styles without such a draw write 8-bit).
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.synth.lungs import default_bank
from models.synth.styles import DEFAULT_STYLE, STYLES, render_sample

FORMATS = {"png": ".png", "png16": ".png", "jpg": ".jpg", "mixed": ".png"}
SPLITS = ("train", "dev", "test")


def encode_image(unit: np.ndarray, fmt: str) -> bytes:
    """float [0, 1] → file bytes: 8-bit PNG, 16-bit PNG or JPEG (quality 95)."""
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(np.round(unit * 255.0).astype(np.uint8), mode="L").save(buf, format="PNG", compress_level=1)
    elif fmt == "png16":
        Image.fromarray(np.round(unit * 65535.0).astype(np.uint16)).save(buf, format="PNG", compress_level=1)
    elif fmt == "jpg":
        Image.fromarray(np.round(unit * 255.0).astype(np.uint8), mode="L").save(buf, format="JPEG", quality=95)
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return buf.getvalue()


@dataclass(frozen=True)
class _Job:
    out: str
    split: str
    index: int
    name: str
    size: int
    seed: int
    fmt: str
    lung_masks: str
    style: str


def _run_job(job: _Job) -> tuple[str, str, int, tuple[str, ...]]:
    r = render_sample(job.seed, job.split, job.index, job.size, style=job.style, bank=default_bank(job.lung_masks))
    fmt = job.fmt
    if fmt == "mixed":
        fmt = "png16" if r.settings.get("png16") else "png"
    data = encode_image(r.image, fmt)
    path = Path(job.out) / job.name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # never leave a half-written image behind an interrupted run
    annotation = ";".join(a.to_object_cxr() for a in r.annotations)
    return job.name, annotation, r.label, r.object_kinds


def generate(
    out: str | Path,
    n_train: int,
    n_dev: int,
    n_test: int,
    size: int = 1024,
    seed: int = 0,
    fmt: str = "png",
    workers: int = 1,
    lung_masks: str = "auto",
    progress: bool = False,
    style: str = DEFAULT_STYLE,
) -> dict[str, Any]:
    """Write the data set; returns the summary also saved as ``OUT/synth.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    default_bank(lung_masks)  # before any worker starts: a missing mask archive is reported once, here
    if size < 64:
        raise ValueError(f"size must be at least 64, got {size}")
    counts = {"train": n_train, "dev": n_dev, "test": n_test}
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"--n-{split} must be >= 0, got {n}")
    out = Path(out)
    jobs = []
    for split, n in counts.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        digits = max(5, len(str(max(n - 1, 0))))
        jobs += [
            _Job(str(out), split, i, f"{split}/{i:0{digits}d}{FORMATS[fmt]}", size, seed, fmt, lung_masks, style)
            for i in range(n)
        ]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="img", desc="synth")
    results = []
    if workers > 1 and len(jobs) > 1:
        # fork where available: workers inherit the imported modules; each builds its own mask cache.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(workers) as pool:
            for res in pool.imap(_run_job, jobs, chunksize=4):
                results.append(res)
                if bar:
                    bar.update()
    else:
        for job in jobs:
            results.append(_run_job(job))
            if bar:
                bar.update()
    if bar:
        bar.close()
    summary: dict[str, Any] = {
        "generator": "models.synth",
        "style": style,
        "seed": seed,
        "size": size,
        "format": fmt,
        "lung_masks": default_bank(lung_masks).source,
        "splits": {},
    }
    k = 0
    for split, n in counts.items():
        rows = results[k : k + n]
        k += n
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image_name", "annotation"])
            for name, annotation, _, _ in rows:
                writer.writerow([name, annotation])
        kinds: dict[str, int] = {}
        for _, _, _, ks in rows:
            for kind in ks:
                kinds[kind] = kinds.get(kind, 0) + 1
        summary["splits"][split] = {
            "images": n,
            "positives": sum(r[2] for r in rows),
            "objects": dict(sorted(kinds.items())),
        }
    (out / "synth.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
