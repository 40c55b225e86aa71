"""A tiny Object-CXR-layout data set written by tests: 64-px grayscale 'radiographs' in /tmp-style folders.

Negatives are a smooth body-like gradient with noise; positives add one bright square (a 'button') whose box
is annotated as an Object-CXR rectangle (type 0). Deterministic per seed; no dependency on models.synth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_tiny_dataset(root: Path, sizes: dict[str, int], image_size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    body = 0.35 + 0.3 * np.exp(-((xx - 0.5) ** 2 / 0.08 + (yy - 0.55) ** 2 / 0.15))
    for split, n in sizes.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = ["image_name,annotation"]
        for i in range(n):
            img = body + rng.normal(0, 0.04, body.shape)
            annotation = ""
            if i % 2 == 1:
                s = int(rng.integers(6, 11))
                x1 = int(rng.integers(8, image_size - 8 - s))
                y1 = int(rng.integers(8, image_size - 8 - s))
                img[y1 : y1 + s, x1 : x1 + s] = 0.95
                annotation = f"0 {x1} {y1} {x1 + s} {y1 + s}"
            name = f"{split}_{i:03d}.png"
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / split / name)
            rows.append(f"{name},{annotation}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root
