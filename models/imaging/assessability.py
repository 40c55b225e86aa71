"""Can this image be judged at all? Checks on the decoded image and its header facts, before any model runs.

A quality gate must never answer "accept" about an image it cannot assess. :func:`check_assessable` returns
the first reason that rules an image out, or None; the checks run cheapest first and need no model:

1. ``no_frames``: a DICOM instance that declares Number of Frames = 0 (the decoder read no pixel).
2. ``too_small``: the shorter side is below ``min_side`` pixels (the service's ``NORMGATE_MIN_IMAGE_SIDE``).
   A radiograph shrunk that far has lost the detail a foreign object needs.
3. ``blank``: no content. Either (a) the 1st–99th percentile range of the grey values is below
   ``BLANK_RANGE`` (less than one 8-bit grey level: a constant image, or one with a few odd pixels), or
   (b) no spatial structure: the correlation of neighbouring pixels on the analysis grid (below) is under
   ``MIN_NEIGHBOUR_CORRELATION``. Independent noise has a neighbour correlation near 0, any photograph or
   radiograph one near 1; an X-ray detector exposed without a patient and windowed to its own range (the
   min–max VOI of a DICOM without a window) is such noise, hence "blank", not a third kind of reason.
4. ``low_dynamic_range``: fewer than ``MIN_GREY_LEVELS`` distinct grey levels at full size, or a 1st–99th
   percentile range below ``MIN_RANGE`` of the full scale: too few grey levels to show anatomy, or an image
   so flat that the model's input is nearly constant.

Thresholds and why (measured on the images the tests name; docs/api.md, "Unassessable"):

* ``BLANK_RANGE = 1/255``: one grey level of an 8-bit image; a range below it is flat whatever the bit depth.
* ``MIN_NEIGHBOUR_CORRELATION = 0.5``: i.i.d. noise measures |r| < 0.05 at any size; on the 64-pixel analysis
  grid the synthetic radiographs (``python -m models.synth``, 600 test images at 640 px) measure ≥ 0.93, the
  radiograph-like files of the ingest test corpus ≥ 0.86, pydicom's CT, MR, NM and US test images ≥ 0.70.
* ``MIN_GREY_LEVELS = 16``: a 4-bit image (16 levels) still shows anatomy coarsely; a 2- or 3-bit one, a
  binary mask or a scanned text page does not. The 8-bit synthetic radiographs use ≥ 235 levels, 12/16-bit
  images thousands.
* ``MIN_RANGE = 0.04``: ~10 of 256 grey levels. 12-bit data in a 16-bit PNG (0–4095 of 65535, a range of
  0.0625) still passes; an image using 1/25 of the scale gives the model an almost constant input.

Grey values are counted on a 16-bit histogram of at most ~256 k pixels, and the correlation reads ~64 k (regular
subsamples of larger images), so the checks cost a few milliseconds next to a decode of tens to hundreds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "ANALYSIS_GRID",
    "BLANK_RANGE",
    "DEFAULT_MIN_SIDE",
    "MIN_GREY_LEVELS",
    "MIN_NEIGHBOUR_CORRELATION",
    "MIN_RANGE",
    "ImageStatistics",
    "UnassessableReason",
    "check_assessable",
    "image_statistics",
]

UnassessableReason = Literal[
    "blank", "too_small", "low_dynamic_range", "no_frames", "unsupported_modality", "out_of_distribution"
]

DEFAULT_MIN_SIDE = 128
BLANK_RANGE = 1.0 / 255.0
MIN_NEIGHBOUR_CORRELATION = 0.5
MIN_GREY_LEVELS = 16
MIN_RANGE = 0.04
# Side of the block-averaged grid the neighbour correlation is measured on: coarse enough that film grain and
# dithering average out in a radiograph, while independent noise stays independent after block averaging.
ANALYSIS_GRID = 64
# Largest number of pixels the grey-level histogram reads (a regular subsample beyond it).
_HISTOGRAM_PIXELS = 1 << 18
_LEVELS = 65536


@dataclass(frozen=True)
class ImageStatistics:
    """What the checks measure, for logs, tests and choosing thresholds."""

    grey_levels: int  # distinct values on a 16-bit scale (of the subsample for large images)
    p1: float  # 1st percentile of the grey values in [0, 1]
    p99: float  # 99th percentile
    neighbour_correlation: float  # mean of the horizontal and vertical lag-1 correlation on the analysis grid

    @property
    def percentile_range(self) -> float:
        return self.p99 - self.p1


def _subsample(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    step = max(1, math.ceil(math.sqrt(pixels.size / _HISTOGRAM_PIXELS)))
    return pixels[::step, ::step] if step > 1 else pixels


def _block_mean(pixels: npt.NDArray[np.float32], grid: int) -> npt.NDArray[np.float64]:
    """Average non-overlapping blocks so the shorter side becomes about ``grid`` (the image itself if smaller).

    Block means of independent noise are independent; a radiograph's grain and dithering average out. Large
    images are first sampled on a regular lattice (every ``step``-th pixel, leaving 4 × 4 samples per block):
    that keeps both properties and reads ~64 k pixels instead of millions."""
    step = max(1, min(pixels.shape) // (4 * grid))
    if step > 1:
        pixels = pixels[::step, ::step]
    height, width = pixels.shape
    block = max(1, min(height, width) // grid)
    rows, cols = height // block, width // block
    cropped = pixels[: rows * block, : cols * block].astype(np.float64)
    means: npt.NDArray[np.float64] = cropped.reshape(rows, block, cols, block).mean(axis=(1, 3))
    return means


def _lag1_correlation(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """Pearson correlation of two equally shaped arrays; 0 when either is constant."""
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def image_statistics(pixels: npt.NDArray[np.float32]) -> ImageStatistics:
    """Grey levels, 1st/99th percentiles and neighbour correlation of a decoded [H, W] image in [0, 1]."""
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"expected a non-empty [H, W] image, got shape {pixels.shape}")
    sample = _subsample(pixels)
    quantised = np.rint(np.clip(sample, 0.0, 1.0).astype(np.float64) * (_LEVELS - 1)).astype(np.uint16)
    histogram = np.bincount(quantised.ravel(), minlength=_LEVELS)
    cumulative = np.cumsum(histogram)
    total = int(cumulative[-1])
    # The smallest level whose cumulative count reaches the share (the "lower" percentile).
    p1 = int(np.searchsorted(cumulative, 0.01 * total)) / (_LEVELS - 1)
    p99 = int(np.searchsorted(cumulative, 0.99 * total)) / (_LEVELS - 1)
    grid = _block_mean(pixels, ANALYSIS_GRID)
    correlations = []
    if grid.shape[1] > 1:
        correlations.append(_lag1_correlation(grid[:, :-1], grid[:, 1:]))
    if grid.shape[0] > 1:
        correlations.append(_lag1_correlation(grid[:-1, :], grid[1:, :]))
    correlation = sum(correlations) / len(correlations) if correlations else 0.0
    return ImageStatistics(
        grey_levels=int(np.count_nonzero(histogram)), p1=p1, p99=p99, neighbour_correlation=correlation
    )


def check_assessable(
    pixels: npt.NDArray[np.float32], number_of_frames: int = 1, min_side: int = DEFAULT_MIN_SIDE
) -> UnassessableReason | None:
    """The first reason the image cannot be assessed (module docstring), or None when it can be.

    ``pixels`` is the decoder's float32 [H, W] image in [0, 1] (``DecodedImage.pixels``); ``number_of_frames``
    the DICOM's declared count (``DecodedImage.number_of_frames``; 1 for PNG/JPEG).
    """
    statistics = image_statistics(pixels) if pixels.ndim == 2 and pixels.size else None
    height, width = pixels.shape if pixels.ndim == 2 else (0, 0)
    return assessability_reason(statistics, width, height, number_of_frames, min_side)


def assessability_reason(
    statistics: ImageStatistics | None,
    width: int,
    height: int,
    number_of_frames: int = 1,
    min_side: int = DEFAULT_MIN_SIDE,
) -> UnassessableReason | None:
    """``check_assessable`` from an image's size and its ``image_statistics`` (None for an empty image), for
    callers that computed the statistics where the pixels were (the service's decode processes)."""
    if number_of_frames == 0:
        return "no_frames"
    if min(width, height) < max(1, min_side) or statistics is None:
        return "too_small"
    if statistics.percentile_range < BLANK_RANGE or statistics.neighbour_correlation < MIN_NEIGHBOUR_CORRELATION:
        return "blank"
    if statistics.grey_levels < MIN_GREY_LEVELS or statistics.percentile_range < MIN_RANGE:
        return "low_dynamic_range"
    return None
