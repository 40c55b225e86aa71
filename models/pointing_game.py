"""Localisation and classification metrics for saliency evaluation, free of any data-set plumbing.

Pointing Game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016; the TorchRay
benchmark ``torchray/benchmark/pointing_game.py``; Özer & Öksüz, MIDL 2021 and Özer et al. 2023 §4.2):
the saliency map's maximum point ``p`` is a *hit* when its distance to the nearest ground-truth box is at most
``τ`` pixels (a point inside a box is at distance 0), and accuracy = hits / (hits + misses). Images without a
box are left out (docs/algorithms.md, "Pointing Game"). τ is measured in the pixels of the grid the map lives
on (the model input grid); the papers use τ = 15 (2023) and τ = 25 (2021). TorchRay and the papers' seed code
test "some box pixel strictly closer than τ"; NormGate counts "distance ≤ τ", which is what
:func:`pointing_game_hit` does, with boxes taken as closed continuous rectangles.

Energy-based Pointing Game (Wang et al., "Score-CAM", CVPRW 2020 §4.2): the share of the (non-negative)
saliency mass that falls inside the union of the boxes — a graded second column next to the binary hit.

FROC, the Object-CXR challenge's localisation metric (JF Healthcare, MIDL 2020, ``froc.py`` of the challenge):
every prediction is a point with a probability; predictions are taken in decreasing probability; an object is
detected the first time a point falls inside its annotation shape; a point inside no object is a false
positive. The sensitivity is read when the false positives per image first reach each of the rates
0.125, 0.25, 0.5, 1, 2, 4, 8, and FROC is the mean of those seven sensitivities. Two edge cases differ from the
challenge script on purpose: a rate the predictions never reach takes the sensitivity after *all* predictions
(the script repeats the last recorded value, or 0 when none was recorded, which scores a perfect one-point-per-
image predictor as 0), and several rates crossed by the same false positive are all recorded at once.

ROC AUC is the Mann–Whitney statistic with mid-ranks for ties (equal to the trapezoidal area under the ROC curve).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2), x = column, y = row

OBJECT_CXR_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _as_numpy_map(saliency: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(saliency, torch.Tensor):
        saliency = saliency.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(saliency, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty 2-D saliency map, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("saliency map contains NaN or infinite values")
    return arr


def _check_box(box: Sequence[float]) -> Box:
    if len(box) != 4:
        raise ValueError(f"a box is (x1, y1, x2, y2), got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box corners out of order (need x1 <= x2, y1 <= y2): {box!r}")
    return x1, y1, x2, y2


def argmax_point(saliency: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """The maximum of a 2-D map as ``(x, y)`` = (column, row).

    Tie rule: the first maximum in row-major order (smallest row, then smallest column) — numpy's ``argmax``
    and the seed code's ``np.where(map == max)[0]``. A constant map therefore points at (0, 0).
    """
    arr = _as_numpy_map(saliency)
    flat = int(np.argmax(arr))
    y, x = divmod(flat, arr.shape[1])
    return x, y


def distance_to_box(point_xy: Sequence[float], box: Sequence[float]) -> float:
    """Euclidean distance from a point to a closed axis-aligned rectangle (0 inside or on its edge)."""
    x, y = float(point_xy[0]), float(point_xy[1])
    x1, y1, x2, y2 = _check_box(box)
    dx = max(x1 - x, 0.0, x - x2)
    dy = max(y1 - y, 0.0, y - y2)
    return math.hypot(dx, dy)


def nearest_box_distance(point_xy: Sequence[float], boxes: Iterable[Sequence[float]]) -> float:
    """Distance to the nearest box; ``inf`` when there is none."""
    return min((distance_to_box(point_xy, b) for b in boxes), default=math.inf)


def pointing_game_hit(point_xy: Sequence[float], boxes: Sequence[Sequence[float]], tau: float) -> bool | None:
    """Hit (True) iff the nearest box is at most ``tau`` away; ``None`` when there is no box (image excluded).

    ``point_xy`` and ``boxes`` must be in the same pixel grid (the model input grid in the evaluation).
    """
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite non-negative number of pixels, got {tau!r}")
    boxes = list(boxes)
    if not boxes:
        return None
    return nearest_box_distance(point_xy, boxes) <= tau


def boxes_mask(shape_hw: Sequence[int], boxes: Iterable[Sequence[float]]) -> np.ndarray:
    """Boolean [H, W] mask of the pixels whose index (x, y) lies inside at least one closed box."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    mask = np.zeros((h, w), dtype=bool)
    for box in boxes:
        x1, y1, x2, y2 = _check_box(box)
        c0, c1 = max(math.ceil(x1), 0), min(math.floor(x2), w - 1)
        r0, r1 = max(math.ceil(y1), 0), min(math.floor(y2), h - 1)
        if c0 <= c1 and r0 <= r1:
            mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


def energy_pointing_game(saliency: np.ndarray | torch.Tensor, boxes: Sequence[Sequence[float]]) -> float | None:
    """Share of the saliency mass inside the union of the boxes, in [0, 1]; ``None`` when there is no box.

    Negative values carry no mass (clipped at 0). A map with no mass at all scores 0: it points nowhere.
    """
    boxes = list(boxes)
    if not boxes:
        return None
    arr = np.clip(_as_numpy_map(saliency), 0.0, None)
    total = float(arr.sum())
    if total <= 0.0:
        return 0.0
    inside = float(arr[boxes_mask(arr.shape, boxes)].sum())
    return min(max(inside / total, 0.0), 1.0)


@dataclass(frozen=True)
class PointingGameResult:
    """Counts of one Pointing Game: ``hits`` out of ``n`` images that had at least one box."""

    hits: int
    n: int

    def __post_init__(self) -> None:
        if not (0 <= self.hits <= self.n):
            raise ValueError(f"need 0 <= hits <= n, got hits={self.hits}, n={self.n}")

    @property
    def misses(self) -> int:
        return self.n - self.hits

    @property
    def accuracy(self) -> float | None:
        """hits / (hits + misses); ``None`` when no image took part."""
        return self.hits / self.n if self.n else None

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[bool | None]) -> PointingGameResult:
        """Count hit/miss outcomes; ``None`` (no box) is left out."""
        hits = n = 0
        for outcome in outcomes:
            if outcome is None:
                continue
            n += 1
            hits += bool(outcome)
        return cls(hits=hits, n=n)


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(
    outcomes: Sequence[bool], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of a hit rate (resampling the images); ``(nan, nan)`` without outcomes."""
    hits = np.asarray(outcomes, dtype=np.float64)
    if hits.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, hits.size, size=(resamples, hits.size))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    return float(np.percentile(means, tail)), float(np.percentile(means, 100.0 - tail))


def paired_bootstrap_difference_ci(
    first: Sequence[bool], second: Sequence[bool], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """``(difference, low, high)`` of two hit rates on the same images (first − second), 95 % percentile
    bootstrap resampling the images jointly, so the pairing is kept."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two non-empty outcome lists of one length, got {a.size} and {b.size}")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, a.size, size=(resamples, a.size))
    differences = a[index].mean(axis=1) - b[index].mean(axis=1)
    return float(a.mean() - b.mean()), float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))


# --- classification --------------------------------------------------------------------------------------------


# --- FROC (Object-CXR challenge) ---------------------------------------------------------------------------------


class ObjectShape(Protocol):
    """Anything that can say whether a point (original pixels) lies inside it, e.g. datasets.Annotation."""

    def contains(self, x: float, y: float) -> bool: ...


@dataclass(frozen=True)
class FrocPrediction:
    """One predicted point (original pixels) on image ``image_id`` with its probability."""

    image_id: Hashable
    probability: float
    x: float
    y: float


@dataclass(frozen=True)
class FrocResult:
    fp_rates: tuple[float, ...]
    sensitivities: tuple[float, ...]

    @property
    def froc(self) -> float:
        """The challenge score: mean sensitivity over the FP rates."""
        return float(np.mean(self.sensitivities)) if self.sensitivities else 0.0


def froc_from_counts(
    items: Iterable[tuple[float, int]], n_images: int, n_objects: int, fp_rates: Sequence[float] = OBJECT_CXR_FP_RATES
) -> FrocResult:
    """FROC from pre-matched predictions: ``(probability, objects newly detected)`` per prediction.

    ``objects newly detected = 0`` marks a false positive. Predictions are taken in decreasing probability
    (stable for ties: input order). Use :func:`froc` to match points against shapes first.
    """
    if n_images <= 0:
        raise ValueError("FROC needs at least one image")
    rates = tuple(float(r) for r in fp_rates)
    if any(b <= a for a, b in itertools.pairwise(rates)) or not rates or rates[0] <= 0:
        raise ValueError(f"fp_rates must be positive and increasing, got {fp_rates!r}")
    ordered = sorted(items, key=lambda item: -float(item[0]))
    hits = false_positives = 0
    sensitivities: list[float] = []
    for _, detected in ordered:
        if detected > 0:
            hits += int(detected)
        else:
            false_positives += 1
            while len(sensitivities) < len(rates) and false_positives / n_images >= rates[len(sensitivities)]:
                sensitivities.append(hits / n_objects if n_objects else 0.0)
        if len(sensitivities) == len(rates):
            break
    final = hits / n_objects if n_objects else 0.0
    while len(sensitivities) < len(rates):
        sensitivities.append(final)
    return FrocResult(fp_rates=rates, sensitivities=tuple(sensitivities))


def froc(
    predictions: Iterable[FrocPrediction],
    objects: Mapping[Hashable, Sequence[ObjectShape]],
    n_images: int,
    fp_rates: Sequence[float] = OBJECT_CXR_FP_RATES,
) -> FrocResult:
    """The Object-CXR FROC of point predictions against annotation shapes.

    ``objects`` maps an image id to its annotated objects (images without objects may be absent);
    ``n_images`` counts every evaluated image, negatives included.
    """
    n_objects = sum(len(v) for v in objects.values())
    detected: set[tuple[Hashable, int]] = set()
    items: list[tuple[float, int]] = []
    for pred in sorted(predictions, key=lambda p: -float(p.probability)):
        newly = 0
        inside_any = False
        for index, shape in enumerate(objects.get(pred.image_id, ())):
            if shape.contains(pred.x, pred.y):
                inside_any = True
                if (pred.image_id, index) not in detected:
                    detected.add((pred.image_id, index))
                    newly += 1
        # A point inside an object that was already detected is neither a new hit nor a false positive.
        items.append((pred.probability, newly if inside_any and newly else (-1 if inside_any else 0)))
    return froc_from_counts([(p, d) for p, d in items if d >= 0], n_images, n_objects, fp_rates)
