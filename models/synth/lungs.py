"""Lung-field shapes for the synthetic radiographs.

Real shapes come from the V7 Labs lung segmentation masks drawn on frontal radiographs of the ieee8023
COVID-19 image collection (https://github.com/ieee8023/covid-chestxray-dataset), shipped as
``torchxrayvision/data/semantic_masks_v7labs_lungs.zip`` inside the torchxrayvision wheel (Apache-2.0
package). Only binary masks ship there, no radiograph pixels. They are read from the installed package at
generation time and never copied into this repository.

torchxrayvision is an optional dependency (``pip install 'normgate[synth]'``). Without it the generator says so
once per process (a ``RuntimeWarning``) and draws procedural lungs. If the archive is absent (or ``procedural`` is
asked for), a parametric pair of lungs is drawn instead:
rounded apices, convex lateral walls, sharp costophrenic angles, domed bases and a cardiac notch on the
image-right (patient-left) lung.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

V7_ZIP_NAME = "semantic_masks_v7labs_lungs.zip"
CANON_HEIGHT = 192  # masks are kept cropped to the lungs' bounding box at this height (shape detail suffices)
MISSING_MASKS_MESSAGE = (
    "models.synth: torchxrayvision is not installed (or its wheel lacks "
    f"{V7_ZIP_NAME}), so the real V7 Labs lung shapes are unavailable; drawing procedural lungs instead. "
    "Install them with: pip install 'normgate[synth]'"
)
_missing_masks_reported = False


def report_missing_masks() -> None:
    """Warn, once per process, that the generator falls back to procedural lungs."""
    global _missing_masks_reported
    if not _missing_masks_reported:
        _missing_masks_reported = True
        warnings.warn(MISSING_MASKS_MESSAGE, RuntimeWarning, stacklevel=3)


def find_v7_zip() -> Path | None:
    """The V7 Labs mask archive inside the installed torchxrayvision package, without importing it (no torch)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / "data" / V7_ZIP_NAME
        if path.is_file():
            return path
    return None


def _canonical_lungs(gray: np.ndarray) -> np.ndarray | None:
    """Crop a decoded mask to its two lungs; None when it is not a clean two-lung frontal mask."""
    binary = (gray > 160).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 3:  # background + at least two components
        return None
    order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1] + 1
    a, b = order[:2]
    area_a, area_b = stats[a, cv2.CC_STAT_AREA], stats[b, cv2.CC_STAT_AREA]
    if area_b < 0.35 * area_a or area_a + area_b < 0.08 * binary.size:
        return None
    # Side by side, not stacked: the two lungs' centroids differ mostly horizontally.
    dx, dy = np.abs(centroids[a] - centroids[b])
    if dx < 2.0 * dy:
        return None
    x0 = min(stats[a, cv2.CC_STAT_LEFT], stats[b, cv2.CC_STAT_LEFT])
    y0 = min(stats[a, cv2.CC_STAT_TOP], stats[b, cv2.CC_STAT_TOP])
    x1 = max(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] for i in (a, b))
    y1 = max(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] for i in (a, b))
    window = labels[y0:y1, x0:x1]
    crop = ((window == a) | (window == b)).astype(np.uint8)
    # Some masks carry the source figure's arrows, bars or lesion outlines in mid-grey (~124). Where one
    # touches a lung it has cut a bite out of it: such a mask is not a clean lung outline, so skip it.
    mid = ((gray[y0:y1, x0:x1] >= 90) & (gray[y0:y1, x0:x1] <= 160)).astype(np.uint8)
    mid = np.asarray(
        cv2.erode(mid, np.ones((3, 3), np.uint8)), np.uint8
    )  # drops the thin anti-aliased rim of every edge
    near = np.asarray(cv2.dilate(crop, np.ones((7, 7), np.uint8)), np.uint8)
    if int((mid & near).sum()) > 0.0005 * crop.size:
        return None
    # Some masks leave out a lesion or device inside a lung (a hole): lungs are filled shapes here.
    crop = ndimage.binary_fill_holes(crop).astype(np.uint8)
    h, w = crop.shape
    if not 0.75 <= w / h <= 1.9:
        return None
    out_w = round(CANON_HEIGHT * w / h)
    return np.asarray(cv2.resize(crop * 255, (out_w, CANON_HEIGHT), interpolation=cv2.INTER_AREA), np.uint8)


class LungMaskBank:
    """Draws a lung mask (uint8 0..255, cropped to the lungs) deterministically from a random generator.

    Masks are decoded lazily and cached, so a worker only pays for the masks it uses.
    """

    def __init__(self, source: str = "auto") -> None:
        if source not in ("auto", "v7", "procedural"):
            raise ValueError(f"lung mask source must be auto, v7 or procedural, got {source!r}")
        self._zip: zipfile.ZipFile | None = None
        self._zip_path: Path | None = None
        self._zip_pid = os.getpid()
        self._names: list[str] = []
        path = find_v7_zip() if source in ("auto", "v7") else None
        if path is not None:
            self._zip, self._zip_path = zipfile.ZipFile(path), path
            self._names = sorted(n for n in self._zip.namelist() if n.lower().endswith((".png", ".jpg", ".jpeg")))
        elif source == "v7":
            raise FileNotFoundError(f"{V7_ZIP_NAME} not found in the installed torchxrayvision package")
        elif source == "auto":
            report_missing_masks()
        self._cache: dict[int, np.ndarray | None] = {}
        self.source = "v7" if self._names else "procedural"

    def _decode(self, index: int) -> np.ndarray | None:
        if index not in self._cache:
            assert self._zip is not None and self._zip_path is not None
            if os.getpid() != self._zip_pid:
                # A forked worker shares the parent's file offset: concurrent reads would interleave, so each
                # process opens the archive for itself.
                self._zip, self._zip_pid = zipfile.ZipFile(self._zip_path), os.getpid()
            data = np.frombuffer(self._zip.read(self._names[index]), np.uint8)
            # Reduced decoding: JPEG decodes at 1/4 scale directly, far cheaper than full size.
            gray = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_2)
            self._cache[index] = None if gray is None else _canonical_lungs(gray)
        return self._cache[index]

    def decode_all(self) -> int:
        """Decode every mask now instead of on first use (a long run decodes them all anyway); the clean ones' count."""
        return sum(self._decode(index) is not None for index in range(len(self._names)))

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """(mask, name): a V7 mask picked by ``rng`` (the next clean one in name order), else a procedural one."""
        if self._names:
            start = int(rng.integers(len(self._names)))
            for step in range(len(self._names)):
                index = (start + step) % len(self._names)
                mask = self._decode(index)
                if mask is not None:
                    return mask, Path(self._names[index]).name
        return procedural_lungs(rng), "procedural"


def procedural_lungs(rng: np.random.Generator) -> np.ndarray:
    """A parametric two-lung mask (uint8 0..255) cropped to the lungs, image-right lung with a cardiac notch."""
    h = CANON_HEIGHT
    w = round(h * rng.uniform(1.05, 1.35))
    mask = np.zeros((h, w), np.uint8)
    gap = rng.uniform(0.10, 0.16) * w  # mediastinum between the lungs at mid height
    for side in (-1, 1):  # -1: image-left (patient right) lung
        lung_w = (w - gap) / 2.0
        medial = w / 2.0 + side * gap / 2.0
        lateral = w / 2.0 + side * (w / 2.0)
        t = np.linspace(0.0, 1.0, 40)
        apex_y = rng.uniform(0.0, 0.04) * h
        base_lat = h * (1.0 if side < 0 else rng.uniform(0.95, 1.0))  # costophrenic angle
        dome = rng.uniform(0.10, 0.18) * h
        # Lateral wall: from the apex out and down, convex, ending at the costophrenic angle.
        # sqrt-like rise near the apex rounds it; the wall reaches full width by ~70 % of the height.
        lat_x = medial + (lateral - medial) * (0.3 + 0.7 * np.sin(np.pi / 2 * np.minimum(t / 0.7, 1.0)) ** 0.8)
        lat_y = apex_y + (base_lat - apex_y) * t
        # Base: a dome rising medially from the costophrenic angle.
        b = np.linspace(0.0, 1.0, 20)
        base_x = lat_x[-1] + (medial - lat_x[-1]) * b
        base_y = base_lat - dome * np.sin(b * np.pi / 2)
        # Medial border: straight up, with the cardiac notch bulging into the image-right lung.
        m = np.linspace(1.0, 0.0, 30)
        notch = (side > 0) * rng.uniform(0.10, 0.18) * lung_w * np.exp(-(((m - 0.75) / 0.18) ** 2))
        med_x = medial + side * (notch + 0.3 * lung_w * np.clip((m - 0.8) / 0.2, 0.0, 1.0) ** 2)
        med_y = apex_y + (base_y[-1] - apex_y) * m
        pts = np.concatenate([np.stack([lat_x, lat_y], 1), np.stack([base_x, base_y], 1), np.stack([med_x, med_y], 1)])
        cv2.fillPoly(mask, [np.round(pts * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    ys, xs = np.nonzero(mask > 127)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    out_w = round(h * crop.shape[1] / crop.shape[0])
    return cv2.resize(crop, (out_w, h), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=4)
def default_bank(source: str = "auto") -> LungMaskBank:
    """One bank per process and source (workers build their own after fork/spawn)."""
    return LungMaskBank(source)
