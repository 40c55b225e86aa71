"""The left ventricular outflow tract (LV → aortic valve → aortic root) and when a 4-chamber slice shows it.

Geometry. The tract is a tube along a quadratic Bézier curve in the heart frame, from the basal LV cavity beside
the septum, past the aortic valve, to the centre of the aortic root, which sits between the two atria at the crux
(where a 5-chamber view shows it). Its radius is ``tract_radius`` in the outflow tract, ``annulus_radius`` at the
valve and ``sinus_radius`` in the sinuses of Valsalva. It follows the base as it descends in systole.

Through-plane position. A correctly planned 4-chamber slice passes below the tract; the tract lies ``z`` mm from
the slice centre: ``z = offset + through_plane · c + tilt · (1 − s)`` for contraction ``c`` (0 end-diastole,
1 end-systole; :mod:`models.synth.cmr.cycle`) and path parameter ``s`` (0 at the LV end, 1 at the root). The base's
through-plane motion in systole (``through_plane``) brings the tract into or out of the slice, so which frames show
it depends on the patient's angulation — usually systole, for some patients diastole.

Partial volume. The slice has thickness ``T`` (a rectangular profile). At a pixel whose in-plane distance to the
tube's axis is ``w``, blood fills the through-plane interval ``[−h, h]``, ``h = √(r² − w²)``, around the axis;
the share of the slice filled with tract blood is ``|[z − T/2, z + T/2] ∩ [−h, h]| / T``. The tube is swept as
a chain of closely spaced spheres, so the fraction at a pixel is the largest over the chain's samples.

The rule (labels and boxes). An output pixel *shows* the tract when at least half of it is tract blood and at
most half of it is LV cavity (the tract's LV end adds nothing the LV cavity does not already show). A frame is
**LVOT-positive** when the pixels showing the tract cover at least ``MIN_VISIBLE_AREA_MM2``; its box is the
bounding box of the pixels at least half filled by the tract *with its wall* (again outside the LV cavity), so
that it holds the bright channel and its dark rim. Every other frame is negative, even in a patient whose other
frames show the tract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.synth.cmr.anatomy import HeartState, Point
from models.synth.cmr.shapes import FINE, FloatArray, Grid, coverage, downsample, window

MIN_VISIBLE_AREA_MM2 = 60.0  # a disc of ≈ 9 mm diameter
VISIBLE_FRACTION = 0.5
PATH_SAMPLES = 40
BASE_FOLLOW = 0.8  # the aortic root follows 80 % of the mitral annulus' descent


@dataclass(frozen=True)
class OutflowTract:
    start: Point  # heart frame (u, v) at end-diastole, relative to the crux
    control: Point
    root: Point
    tract_radius: float
    annulus_radius: float
    sinus_radius: float
    wall: float
    valve_at: float  # path parameter of the aortic valve
    offset: float  # z of the root at end-diastole, mm from the slice centre
    through_plane: float  # change of z from end-diastole to end-systole
    tilt: float  # z at the LV end minus z at the root

    def samples(self, st: HeartState, base_descent: float) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """(s, x, y, r): path parameter, image position (mm) and radius of the chain of spheres at state ``st``.

        The tract is anchored to the crux but follows only ``BASE_FOLLOW`` of the base's descent."""
        s = np.linspace(0.0, 1.0, PATH_SAMPLES)
        b0, b1, b2 = (1 - s) ** 2, 2 * (1 - s) * s, s**2
        u = b0 * self.start[0] + b1 * self.control[0] + b2 * self.root[0]
        v = b0 * self.start[1] + b1 * self.control[1] + b2 * self.root[1]
        lag = -(1.0 - BASE_FOLLOW) * base_descent * st.contraction
        u = u + lag
        x = st.crux[0] + u * st.axis[0] + v * st.across[0]
        y = st.crux[1] + u * st.axis[1] + v * st.across[1]
        return s, x, y, self.radius(s)

    def radius(self, s: FloatArray) -> FloatArray:
        before = self.valve_at - 0.15
        to_annulus = np.clip((s - before) / 0.15, 0.0, 1.0)
        sinus = np.clip((s - self.valve_at) / (0.6 * (1.0 - self.valve_at)), 0.0, 1.0)
        r = self.tract_radius + (self.annulus_radius - self.tract_radius) * to_annulus
        bulge: FloatArray = r + (self.sinus_radius - self.annulus_radius) * np.sin(0.5 * math.pi * sinus) ** 2
        return bulge

    def depth(self, s: FloatArray, contraction: float) -> FloatArray:
        """z (mm from the slice centre) of the tract's axis at path parameter ``s``."""
        z: FloatArray = self.offset + self.through_plane * contraction + self.tilt * (1.0 - s)
        return z

    @property
    def max_radius(self) -> float:
        return max(self.tract_radius, self.annulus_radius, self.sinus_radius)


def slab_fraction(w: FloatArray, z: FloatArray, r: FloatArray, thickness: float) -> FloatArray:
    """Share of a slab of ``thickness`` centred at 0 that lies inside a sphere/tube section of radius ``r`` whose
    axis is at depth ``z``, at in-plane distance ``w`` from the axis."""
    h = np.sqrt(np.maximum(r * r - w * w, 0.0))
    overlap = np.minimum(z + h, thickness / 2) - np.maximum(z - h, -thickness / 2)
    frac: FloatArray = np.clip(overlap / thickness, 0.0, 1.0)
    return frac


def tract_fraction(
    grid: Grid, tract: OutflowTract, st: HeartState, base_descent: float, thickness: float, extra_radius: float = 0.0
) -> FloatArray:
    """Share of each pixel of ``grid`` (through the slice) filled by the tract grown by ``extra_radius`` mm."""
    s, xs, ys, rs = tract.samples(st, base_descent)
    zs = tract.depth(s, st.contraction)
    out = np.zeros(grid.shape, dtype=np.float64)
    gx, gy = grid.x[0], grid.y[:, 0]
    for x, y, r, z in zip(xs, ys, rs + extra_radius, zs):
        if abs(z) >= r + thickness / 2:
            continue
        # only the pixels within the sphere's reach
        c0, c1 = np.searchsorted(gx, [x - r, x + r])
        r0, r1 = np.searchsorted(gy, [y - r, y + r])
        if c0 >= c1 or r0 >= r1:
            continue
        w = np.hypot(gx[None, c0:c1] - x, gy[r0:r1, None] - y)
        part = out[r0:r1, c0:c1]
        np.maximum(part, slab_fraction(w, np.asarray(z), np.asarray(r), thickness), out=part)
    return out


@dataclass(frozen=True)
class Visibility:
    """What a frame shows of the tract, in output pixels."""

    area_mm2: float
    box: tuple[int, int, int, int] | None  # x1, y1, x2, y2 (columns, rows; inclusive) when LVOT-positive

    @property
    def positive(self) -> bool:
        return self.box is not None


def tract_window(
    tract: OutflowTract, st: HeartState, base_descent: float, rows: int, cols: int, spacing: float, margin: float
) -> Grid:
    """The fine-grid window around the tract (its spheres grown by ``margin`` mm)."""
    _, xs, ys, rs = tract.samples(st, base_descent)
    reach = float(rs.max()) + margin
    return window(
        rows,
        cols,
        spacing,
        float(xs.min()) - reach,
        float(xs.max()) + reach,
        float(ys.min()) - reach,
        float(ys.max()) + reach,
    )


def visibility(
    tract: OutflowTract,
    st: HeartState,
    base_descent: float,
    thickness: float,
    rows: int,
    cols: int,
    spacing: float,
) -> Visibility:
    """Apply the rule of the module docstring to the frame at state ``st``."""
    grid = tract_window(tract, st, base_descent, rows, cols, spacing, margin=tract.wall + 2.0 * spacing)
    if grid.shape[0] == 0 or grid.shape[1] == 0:
        return Visibility(0.0, None)
    u, v = st.uv(grid)
    outside_lv = downsample(coverage(st.lv_cavity(u, v), grid.step_mm)) <= 0.5
    blood = downsample(tract_fraction(grid, tract, st, base_descent, thickness))
    shows: npt.NDArray[np.bool_] = (blood >= VISIBLE_FRACTION) & outside_lv
    area = float(shows.sum()) * spacing * spacing
    if area < MIN_VISIBLE_AREA_MM2:
        return Visibility(area, None)
    walled = downsample(tract_fraction(grid, tract, st, base_descent, thickness, extra_radius=tract.wall))
    rows_idx, cols_idx = np.nonzero(((walled >= VISIBLE_FRACTION) & outside_lv) | shows)
    r0, c0 = grid.r0 // FINE, grid.c0 // FINE
    box = (
        int(cols_idx.min()) + c0,
        int(rows_idx.min()) + r0,
        int(cols_idx.max()) + c0,
        int(rows_idx.max()) + r0,
    )
    return Visibility(area, box)
