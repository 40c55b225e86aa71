"""Drawing on a millimetre grid: signed distances of ellipses, segments and half-planes, soft masks, painting.

Every structure of the 4-chamber image is a region given by a signed distance in millimetres (negative
inside). A region becomes a coverage mask whose value ramps linearly across one drawing pixel at its edge —
the share of a pixel a straight edge through it covers — so a pixel across an edge holds the mix of the tissues
it covers (in-plane partial volume). Masks are painted front to back over the tissue map (``value`` replaces what
is under the mask in proportion to the coverage). The drawing grid can be ``FINE`` times finer than the output
and averaged down; the ramp makes FINE = 1 good enough and four times cheaper than FINE = 2.

The ellipse distance is the first-order estimate ``(k − 1) / |∇k|`` with ``k`` the ellipse's normalised
radius: exact on the boundary's normal direction to first order, which is all an edge ramp and a few-millimetre
dilation need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

FINE = 1  # drawing grid = FINE × the output matrix in each direction


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates (mm from the field-of-view centre; x to the right, y down) of a window of the
    fine grid: fine rows ``r0:r1`` and columns ``c0:c1`` (multiples of FINE, so the window averages down onto
    whole output pixels)."""

    x: FloatArray  # [1, w]
    y: FloatArray  # [h, 1]
    step_mm: float  # fine pixel size
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.r1 - self.r0, self.c1 - self.c0


def full_grid(rows: int, cols: int, spacing_mm: float) -> Grid:
    """The whole fine grid of an output matrix of ``rows`` × ``cols`` pixels of ``spacing_mm``."""
    return window(rows, cols, spacing_mm, -math.inf, math.inf, -math.inf, math.inf)


def window(rows: int, cols: int, spacing_mm: float, x_min: float, x_max: float, y_min: float, y_max: float) -> Grid:
    """The part of the fine grid covering the rectangle [x_min, x_max] × [y_min, y_max] mm (clipped to the image,
    rounded outwards to whole output pixels); empty (zero rows or columns) when it lies outside."""
    step = spacing_mm / FINE

    def index_range(lo: float, hi: float, n_out: int) -> tuple[int, int]:
        n = n_out * FINE
        # fine pixel j has its centre at (j + 0.5 − n/2)·step
        a = 0 if lo == -math.inf else math.floor(lo / step + n / 2 - 0.5)
        b = n if hi == math.inf else math.ceil(hi / step + n / 2 + 0.5)
        a = max(0, min(n, (a // FINE) * FINE))
        b = max(a, min(n, -(-b // FINE) * FINE))
        return a, b

    r0, r1 = index_range(y_min, y_max, rows)
    c0, c1 = index_range(x_min, x_max, cols)
    xs = (np.arange(c0, c1, dtype=np.float64) + 0.5 - cols * FINE / 2) * step
    ys = (np.arange(r0, r1, dtype=np.float64) + 0.5 - rows * FINE / 2) * step
    return Grid(xs[None, :], ys[:, None], step, r0, r1, c0, c1)


def downsample(fine: FloatArray) -> FloatArray:
    """Average FINE × FINE blocks: the fine drawing becomes output pixels holding their tissue mix."""
    h, w = fine.shape
    out: FloatArray = fine.reshape(h // FINE, FINE, w // FINE, FINE).mean(axis=(1, 3))
    return out


def ellipse_sdf(
    x: FloatArray, y: FloatArray, cx: float, cy: float, a: float, b: float, angle_rad: float = 0.0
) -> FloatArray:
    """Signed distance (mm, negative inside) to the ellipse centred at (cx, cy) with semi-axis ``a`` along the
    direction ``angle_rad`` (from +x towards +y) and ``b`` across it."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    dx, dy = x - cx, y - cy
    p = dx * c + dy * s
    q = dy * c - dx * s
    k = np.sqrt((p / a) ** 2 + (q / b) ** 2)
    grad = np.sqrt((p / (a * a)) ** 2 + (q / (b * b)) ** 2)
    safe_k = np.maximum(k, 1e-9)
    dist: FloatArray = np.where(k > 1e-6, (k - 1.0) * safe_k / np.maximum(grad, 1e-12), -min(a, b))
    return dist


def segment_sdf(x: FloatArray, y: FloatArray, p: tuple[float, float], q: tuple[float, float]) -> FloatArray:
    """Distance (mm) to the segment p–q (zero on it; subtract a half-thickness to make a band)."""
    px, py = p
    vx, vy = q[0] - px, q[1] - py
    length2 = vx * vx + vy * vy
    t = np.clip(((x - px) * vx + (y - py) * vy) / max(length2, 1e-12), 0.0, 1.0)
    dist: FloatArray = np.hypot(x - px - t * vx, y - py - t * vy)
    return dist


def coverage(sdf: FloatArray, step_mm: float) -> FloatArray:
    """Share of a fine pixel inside the region (linear ramp one fine pixel wide across the boundary)."""
    cov: FloatArray = np.clip(0.5 - sdf / step_mm, 0.0, 1.0)
    return cov


def paint(canvas: FloatArray, mask: FloatArray, value: float | FloatArray) -> None:
    """In place: ``canvas ← canvas + mask·(value − canvas)`` (the mask's share of each pixel becomes ``value``)."""
    canvas += mask * (value - canvas)
