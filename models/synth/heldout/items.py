"""Held-out style, objects: signed-distance shapes evaluated on a local pixel grid, written independently of v2.

Every object is a union/difference of closed-form signed distance functions (disc, annulus, capsule along a
segment, rounded box, Catmull-Rom spline as a chain of capsules), turned into coverage by a linear ramp of one
pixel across the boundary — no supersampled raster drawing as in v1/v2. Sizes come from gamma and normal draws
around real object sizes (a shirt button ~11 mm, a snap ~9 mm, a coin ~21 mm, a paper clip ~33 mm, an ECG
electrode pad ~35 mm, keys, hair clips …), not v2's uniform ranges, and kinds are drawn from their own table.

The annotation is computed from the object's own coverage: the bounding box of the pixels it covers (rectangles,
ellipses), or for long things the outline of the covered pixels grown by three pixels and simplified by at most one
pixel (polygons), so every covered pixel lies inside its annotation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from models.datasets import ELLIPSE, POLYGON, RECTANGLE, Annotation

FloatArray = npt.NDArray[np.float32]
Rng = np.random.Generator
Point = tuple[float, float]


@dataclass
class Item:
    """An object's density (peak = its density) on the patch whose top-left image pixel is (left, top)."""

    kind: str
    density: FloatArray
    left: int
    top: int
    annotation: Annotation


class Patch:
    """Pixel-centre coordinates of a square neighbourhood of the image, for evaluating distance functions."""

    def __init__(self, centre: Point, radius: float) -> None:
        r = math.ceil(radius) + 3
        self.left, self.top = round(centre[0]) - r, round(centre[1]) - r
        ys, xs = np.mgrid[0 : 2 * r + 1, 0 : 2 * r + 1].astype(np.float32)
        self.x = xs + self.left
        self.y = ys + self.top


def cover(sdf: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """Coverage from a signed distance (negative inside), a one-pixel linear ramp at the boundary."""
    return np.asarray(np.clip(0.5 - sdf, 0.0, 1.0), np.float32)


def sd_disc(p: Patch, c: Point, r: float) -> FloatArray:
    return np.asarray(np.hypot(p.x - c[0], p.y - c[1]) - r, np.float32)


def sd_ellipse(p: Patch, c: Point, a: float, b: float, angle: float) -> FloatArray:
    """Approximate signed distance to an ellipse (exact on its axes), enough for one-pixel antialiasing."""
    dx, dy = p.x - c[0], p.y - c[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    k = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return np.asarray((k - 1.0) * min(a, b), np.float32)


def sd_segment(p: Patch, a: Point, b: Point, r: float) -> FloatArray:
    ax, ay = a
    bx, by = b
    vx, vy = bx - ax, by - ay
    length2 = max(vx * vx + vy * vy, 1e-9)
    t = np.clip(((p.x - ax) * vx + (p.y - ay) * vy) / length2, 0.0, 1.0)
    return np.asarray(np.hypot(p.x - ax - t * vx, p.y - ay - t * vy) - r, np.float32)


def sd_polyline(p: Patch, pts: npt.NDArray[np.float64], r: float) -> FloatArray:
    """Signed distance to a chain of capsules; each segment is evaluated only in its own neighbourhood (farther
    pixels keep a large distance, which is all the coverage ramp needs)."""
    out = np.full(p.x.shape, 1e6, np.float32)
    h, w = out.shape
    reach = r + 3.0
    for a, b in itertools.pairwise(pts):
        c0 = max(math.floor(min(a[0], b[0]) - reach) - p.left, 0)
        c1 = min(math.ceil(max(a[0], b[0]) + reach) - p.left + 1, w)
        r0 = max(math.floor(min(a[1], b[1]) - reach) - p.top, 0)
        r1 = min(math.ceil(max(a[1], b[1]) + reach) - p.top + 1, h)
        if c0 >= c1 or r0 >= r1:
            continue
        window = Patch.__new__(Patch)
        window.left, window.top = p.left + c0, p.top + r0
        window.x, window.y = p.x[r0:r1, c0:c1], p.y[r0:r1, c0:c1]
        seg = sd_segment(window, (float(a[0]), float(a[1])), (float(b[0]), float(b[1])), r)
        np.minimum(out[r0:r1, c0:c1], seg, out=out[r0:r1, c0:c1])
    return out


def sd_box(p: Patch, c: Point, half: Point, angle: float, rounding: float) -> FloatArray:
    dx, dy = p.x - c[0], p.y - c[1]
    u = np.abs(dx * math.cos(angle) + dy * math.sin(angle)) - half[0] + rounding
    v = np.abs(-dx * math.sin(angle) + dy * math.cos(angle)) - half[1] + rounding
    outside = np.hypot(np.maximum(u, 0), np.maximum(v, 0))
    return np.asarray(outside + np.minimum(np.maximum(u, v), 0) - rounding, np.float32)


def catmull_rom(control: npt.NDArray[np.float64], per_segment: int = 8) -> npt.NDArray[np.float64]:
    """A smooth curve through the control points (centripetal parameter not needed at these bends)."""
    padded = np.vstack([2 * control[0] - control[1], control, 2 * control[-1] - control[-2]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        out.append(
            0.5
            * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    out.append(control[-1][None])
    return np.vstack(out)


def wander(
    rng: Rng, start: Point, length: float, heading: float, bend: float, knots: int = 5
) -> npt.NDArray[np.float64]:
    """Control points of a wire: ``knots`` steps of equal length, heading changing by normal draws."""
    pts = [np.array(start, np.float64)]
    step = length / knots
    for _ in range(knots):
        heading += float(rng.normal(0.0, bend))
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    return catmull_rom(np.array(pts))


# --- the annotation from the coverage ------------------------------------------------------------------------


def annotate(kind_shape: int, coverage: FloatArray, left: int, top: int) -> Annotation:
    covered = coverage > 0.02
    ys, xs = np.nonzero(covered)
    x1, y1, x2, y2 = left + int(xs.min()), top + int(ys.min()), left + int(xs.max()), top + int(ys.max())
    if kind_shape != POLYGON:
        return Annotation(kind_shape, ((float(x1), float(y1)), (float(x2), float(y2))))
    grown = cv2.dilate(covered.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    grown = np.pad(grown, 1)
    contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    simple = cv2.approxPolyDP(outline, 1.0, True).reshape(-1, 2)
    if len(simple) < 3:
        return Annotation(RECTANGLE, ((float(x1), float(y1)), (float(x2), float(y2))))
    pts = tuple((float(x + left - 1), float(y + top - 1)) for x, y in simple)
    return Annotation(POLYGON, pts)


def make_item(kind: str, shape: int, patch: Patch, coverage: FloatArray, density: float) -> Item | None:
    if float(coverage.max()) <= 0.02:
        return None
    coverage = np.where(coverage > 0.02, coverage, 0.0).astype(np.float32)
    return Item(
        kind, coverage * np.float32(density), patch.left, patch.top, annotate(shape, coverage, patch.left, patch.top)
    )


def metal_density(rng: Rng) -> float:
    return float(np.clip(rng.lognormal(math.log(1.4), 0.45), 0.6, 3.5))


def plastic_density(rng: Rng) -> float:
    return float(np.clip(rng.lognormal(math.log(0.25), 0.35), 0.1, 0.55))


# --- kinds ---------------------------------------------------------------------------------------------------


def shirt_button(rng: Rng, c: Point, cm: float) -> Item | None:
    r = float(np.clip(rng.gamma(9.0, 0.06), 0.3, 1.1)) * cm
    p = Patch(c, r + 2)
    body = cover(sd_disc(p, c, r))
    rim = cover(np.abs(sd_disc(p, c, r - 0.08 * r)) - 0.07 * r)
    holes = np.zeros_like(body)
    n = 4 if rng.random() < 0.6 else 2
    turn = rng.uniform(0, math.pi)
    for k in range(n):
        a = turn + 2 * math.pi * k / n
        hole = (c[0] + 0.33 * r * math.cos(a), c[1] + 0.33 * r * math.sin(a))
        holes = np.maximum(holes, cover(sd_disc(p, hole, max(0.12 * r, 0.6))))
    coverage = np.clip(0.75 * body + 0.25 * rim - holes, 0.0, 1.0)
    dens = metal_density(rng) if rng.random() < 0.3 else plastic_density(rng)
    return make_item("button", ELLIPSE, p, coverage, dens)


def press_stud(rng: Rng, c: Point, cm: float) -> Item | None:
    r = float(np.clip(rng.normal(0.45, 0.1), 0.2, 0.75)) * cm
    p = Patch(c, r + 2)
    ring = cover(np.abs(sd_disc(p, c, 0.8 * r)) - 0.2 * r)
    centre = cover(sd_disc(p, c, 0.3 * r))
    return make_item("press_stud", ELLIPSE, p, np.maximum(ring, centre), metal_density(rng))


def coin(rng: Rng, c: Point, cm: float) -> Item | None:
    r = float(np.clip(rng.normal(1.05, 0.15), 0.7, 1.5)) * cm
    p = Patch(c, r + 2)
    face = cover(sd_disc(p, c, r))
    relief = 0.06 * np.sin((p.x - c[0]) / (0.15 * r)) * np.cos((p.y - c[1]) / (0.2 * r))
    return make_item("coin", ELLIPSE, p, np.clip(face * (0.92 + relief), 0.0, 1.0), metal_density(rng) * 1.3)


def key(rng: Rng, c: Point, cm: float) -> Item | None:
    length = float(np.clip(rng.normal(5.5, 0.8), 4.0, 7.5)) * cm
    angle = rng.uniform(0, math.pi)
    d = np.array([math.cos(angle), math.sin(angle)])
    bow = (c[0] - 0.35 * length * d[0], c[1] - 0.35 * length * d[1])
    tip = (c[0] + 0.5 * length * d[0], c[1] + 0.5 * length * d[1])
    p = Patch(c, 0.6 * length + 2)
    head = np.maximum(cover(sd_disc(p, bow, 0.22 * length)) - cover(sd_disc(p, bow, 0.07 * length)), 0.0)
    blade = cover(sd_segment(p, bow, tip, 0.06 * length))
    teeth = np.zeros_like(blade)
    for k in range(4):
        t = 0.3 + 0.15 * k
        q = (bow[0] + t * (tip[0] - bow[0]), bow[1] + t * (tip[1] - bow[1]))
        q2 = (q[0] - 0.1 * length * d[1], q[1] + 0.1 * length * d[0])
        teeth = np.maximum(teeth, cover(sd_segment(p, q, q2, 0.03 * length)))
    return make_item("key", RECTANGLE, p, np.maximum(np.maximum(head, blade), teeth), metal_density(rng))


def hair_clip(rng: Rng, c: Point, cm: float) -> Item | None:
    length = float(np.clip(rng.normal(5.0, 0.6), 3.5, 6.5)) * cm
    angle = rng.uniform(0, math.pi)
    p = Patch(c, 0.55 * length + 2)
    d = np.array([math.cos(angle), math.sin(angle)])
    n = np.array([-d[1], d[0]])
    a = np.array(c) - 0.5 * length * d
    legs = [np.vstack([a + s * 0.08 * length * n, a + length * d + s * 0.03 * length * n]) for s in (-1, 1)]
    coverage = cover(np.minimum(sd_polyline(p, legs[0], 0.04 * cm + 0.5), sd_polyline(p, legs[1], 0.04 * cm + 0.5)))
    return make_item("hair_clip", RECTANGLE, p, coverage, metal_density(rng))


def paper_clip(rng: Rng, c: Point, cm: float) -> Item | None:
    length = float(np.clip(rng.normal(3.3, 0.5), 2.4, 5.0)) * cm
    width = 0.3 * length
    angle = rng.uniform(0, math.pi)
    d = np.array([math.cos(angle), math.sin(angle)])
    n = np.array([-d[1], d[0]])
    o = np.array(c) - 0.5 * length * d
    # Three nested U-turns as straight runs joined by half-circles, in the clip's own axes.
    local = [(0.75, 0.5), (0.0, 0.5), (0.0, -0.5), (1.0, -0.5), (1.0, 0.3), (0.2, 0.3), (0.2, -0.3), (0.7, -0.3)]
    pts = np.array([o + u * length * d + v * width * n for u, v in local])
    curve = catmull_rom(pts, 6)
    p = Patch(c, 0.6 * length + 2)
    return make_item("paper_clip", RECTANGLE, p, cover(sd_polyline(p, curve, max(0.05 * cm, 0.6))), metal_density(rng))


def hook_and_eye(rng: Rng, c: Point, cm: float) -> Item | None:
    angle = float(rng.normal(0.0, 0.15))
    p = Patch(c, 2.0 * cm)
    coverage = np.zeros_like(p.x)
    for k in range(int(rng.integers(2, 4))):
        centre = (c[0] + (k - 1) * 0.6 * cm * math.cos(angle), c[1] + (k - 1) * 0.6 * cm * math.sin(angle))
        coverage = np.maximum(coverage, cover(sd_box(p, centre, (0.15 * cm, 0.6 * cm), angle, 0.05 * cm)))
    return make_item("hook_and_eye", RECTANGLE, p, coverage, metal_density(rng))


def electrode_pad(rng: Rng, c: Point, cm: float) -> Item | None:
    pad = float(np.clip(rng.normal(1.8, 0.2), 1.3, 2.4)) * cm
    p = Patch(c, pad + 2)
    foam = cover(sd_disc(p, c, pad))
    clip_r = float(np.clip(rng.normal(0.5, 0.06), 0.35, 0.65)) * cm
    clip = cover(sd_disc(p, c, clip_r))
    dens = metal_density(rng)
    return make_item("electrode", ELLIPSE, p, np.maximum(0.05 * foam, clip), dens)


def wire(
    rng: Rng, c: Point, cm: float, curve: npt.NDArray[np.float64] | None = None, kind: str = "wire"
) -> Item | None:
    if curve is None:
        curve = wander(rng, c, float(rng.gamma(4.0, 2.0)) * cm + 2 * cm, rng.uniform(0, 2 * math.pi), 0.35)
    centre = (float(curve[:, 0].mean()), float(curve[:, 1].mean()))
    reach = float(np.max(np.hypot(curve[:, 0] - centre[0], curve[:, 1] - centre[1])))
    p = Patch(centre, reach + 3)
    thickness = float(np.clip(rng.normal(0.1, 0.03), 0.05, 0.2)) * cm
    coverage = np.maximum(
        cover(sd_polyline(p, curve, thickness + 0.5)), 0.2 * cover(sd_polyline(p, curve, 2.5 * thickness + 0.8))
    )
    return make_item(kind, POLYGON, p, coverage, metal_density(rng))


def bead_string(
    rng: Rng, c: Point, cm: float, curve: npt.NDArray[np.float64] | None = None, kind: str = "bead_string"
) -> Item | None:
    if curve is None:
        curve = wander(rng, c, float(rng.gamma(5.0, 1.2)) * cm, rng.uniform(0, 2 * math.pi), 0.25)
    centre = (float(curve[:, 0].mean()), float(curve[:, 1].mean()))
    reach = float(np.max(np.hypot(curve[:, 0] - centre[0], curve[:, 1] - centre[1])))
    p = Patch(centre, reach + 0.6 * cm + 3)
    bead = float(np.clip(rng.normal(0.2, 0.05), 0.1, 0.35)) * cm
    seg = np.hypot(*np.diff(curve, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    coverage = np.zeros_like(p.x)
    for at in np.arange(0.0, s[-1], 2.2 * bead):
        q = (float(np.interp(at, s, curve[:, 0])), float(np.interp(at, s, curve[:, 1])))
        coverage = np.maximum(coverage, cover(np.abs(sd_disc(p, q, bead)) - 0.3 * bead))
    dens = metal_density(rng) if rng.random() < 0.7 else plastic_density(rng)
    return make_item(kind, POLYGON, p, coverage, dens)


def buckle(rng: Rng, c: Point, cm: float) -> Item | None:
    half = (float(rng.normal(1.6, 0.3)) * cm, float(rng.normal(1.1, 0.2)) * cm)
    angle = float(rng.normal(0.0, 0.3))
    p = Patch(c, max(half) * 1.5 + 2)
    frame = cover(np.abs(sd_box(p, c, half, angle, 0.3 * cm)) - 0.12 * cm)
    prong = cover(sd_segment(p, c, (c[0] + half[0] * math.cos(angle), c[1] + half[0] * math.sin(angle)), 0.08 * cm))
    return make_item("buckle", RECTANGLE, p, np.maximum(frame, prong), metal_density(rng))


Maker = Callable[[Rng, Point, float], "Item | None"]

# Support devices: never annotated (Object-CXR), drawn over the lungs and elsewhere in both classes.
SUPPORT_DEVICES = frozenset({"electrode", "lead_wire"})

# Kinds over the lung fields (annotated) and their weights in this style's own table.
LUNG_KINDS: dict[str, tuple[float, Maker]] = {
    "button": (0.24, shirt_button),
    "press_stud": (0.14, press_stud),
    "coin": (0.06, coin),
    "key": (0.04, key),
    "hair_clip": (0.05, hair_clip),
    "paper_clip": (0.07, paper_clip),
    "hook_and_eye": (0.06, hook_and_eye),
    "wire": (0.12, wire),
    "bead_string": (0.07, bead_string),
    "buckle": (0.05, buckle),
}
