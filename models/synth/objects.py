"""Radiopaque foreign objects and the tempting look-alikes that are not foreign objects.

Object kinds and sizes follow what Object-CXR (JF Healthcare) annotates on frontal radiographs: buttons
(1–2 cm, plastic or metal, with holes), snap fasteners (1–1.6 cm), coins (1.8–2.8 cm), rings/earrings,
ECG electrodes (3–4 cm foam pad with a ~1 cm metal stud) with their lead wires and clip connectors, loose
wires, paper clips (3–5 cm), safety pins (2.5–5.5 cm), necklace chains with pendants and bra hook clasps.
Annotation types follow the challenge: rectangles for clips, pins and clasps, ellipses for round things,
polygons for wires and chains.

Each object is drawn 4× supersampled in a small patch, area-downsampled, slightly blurred, and cut below
2 % of its peak, so its support is exact and its annotation is computed from the pixels it really covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from models.datasets import ELLIPSE, POLYGON, RECTANGLE, Annotation

__all__ = ["ELLIPSE", "FOREIGN_OBJECTS", "POLYGON", "RECTANGLE", "Patch", "distractors"]

FloatArray = npt.NDArray[np.float32]
Points = npt.NDArray[np.float64]
PointLike = npt.ArrayLike
Rng = np.random.Generator
Box = tuple[float, float, float, float]

SS = 4  # supersampling factor inside object patches
PAD = 3  # pixels of padding around an object inside its patch (blur room)


@dataclass
class Patch:
    """Density added by one object: ``density`` placed with its top-left pixel at (x0, y0)."""

    density: np.ndarray
    x0: int
    y0: int
    kind_name: str
    annotations: tuple[Annotation, ...]


class _Canvas:
    """A supersampled drawing surface covering image pixels [x0, x0+w) × [y0, y0+h)."""

    def __init__(self, x_min: float, y_min: float, x_max: float, y_max: float) -> None:
        self.x0 = int(np.floor(x_min)) - PAD
        self.y0 = int(np.floor(y_min)) - PAD
        self.w = int(np.ceil(x_max)) + PAD + 1 - self.x0
        self.h = int(np.ceil(y_max)) + PAD + 1 - self.y0
        self.img = np.zeros((self.h * SS, self.w * SS), np.float32)

    def p(self, xy: PointLike) -> npt.NDArray[np.int32]:
        """Image coordinates → supersampled int32 points with 2 fractional bits (for ``shift=2``)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        # Pixel centres: image pixel i covers supersampled [i*SS, (i+1)*SS), centre at i*SS + SS/2 - 0.5.
        sx = (xy[:, 0] - self.x0) * SS + SS / 2 - 0.5
        sy = (xy[:, 1] - self.y0) * SS + SS / 2 - 0.5
        return np.round(np.stack([sx, sy], 1) * 4).astype(np.int32).reshape(-1, 1, 2)

    def r(self, radius: float) -> int:
        return max(1, round(radius * SS * 4))

    def t(self, thickness: float) -> int:
        return max(1, round(thickness * SS))

    def circle(self, c: PointLike, radius: float, value: float, thickness: float = -1.0) -> None:
        th = -1 if thickness < 0 else self.t(thickness)
        cv2.circle(self.img, tuple(self.p(c)[0, 0]), self.r(radius), float(value), th, cv2.LINE_8, 2)

    def ellipse(
        self, c: PointLike, axes: tuple[float, float], angle: float, value: float, thickness: float = -1.0
    ) -> None:
        th = -1 if thickness < 0 else self.t(thickness)
        cv2.ellipse(
            self.img,
            tuple(self.p(c)[0, 0]),
            (self.r(axes[0]), self.r(axes[1])),
            float(angle),
            0,
            360,
            float(value),
            th,
            cv2.LINE_8,
            2,
        )

    def polyline(self, xy: PointLike, value: float, thickness: float, closed: bool = False) -> None:
        cv2.polylines(self.img, [self.p(xy)], closed, float(value), self.t(thickness), cv2.LINE_8, 2)

    def polygon(self, xy: PointLike, value: float) -> None:
        cv2.fillPoly(self.img, [self.p(xy)], float(value), cv2.LINE_8, 2)

    def finish(self, density: float, blur: float) -> FloatArray:
        img = np.asarray(cv2.resize(self.img, (self.w, self.h), interpolation=cv2.INTER_AREA), np.float32)
        if blur > 0:
            img = np.asarray(cv2.GaussianBlur(img, (5, 5), blur), np.float32)
        peak = float(img.max())
        img[img < 0.02 * peak] = 0.0  # exact, finite support
        return img * np.float32(density)


def _rot(points: PointLike, angle: float, centre: PointLike) -> Points:
    ca, sa = np.cos(angle), np.sin(angle)
    p = np.asarray(points, np.float64)
    rotated = np.stack([ca * p[:, 0] - sa * p[:, 1], sa * p[:, 0] + ca * p[:, 1]], 1)
    return np.asarray(rotated + np.asarray(centre), np.float64)


def _support_box(d: FloatArray, x0: int, y0: int, margin: float) -> Box:
    ys, xs = np.nonzero(d)
    return (
        float(x0 + xs.min() - margin),
        float(y0 + ys.min() - margin),
        float(x0 + xs.max() + margin),
        float(y0 + ys.max() + margin),
    )


def _outward_box(box: Box) -> tuple[tuple[float, float], tuple[float, float]]:
    """Corners rounded outwards to whole pixels. Not clamped to the image yet: the caller may still shift
    the object inside (``render._fit_inside``) and clamps afterwards."""
    x1, y1, x2, y2 = box
    return (float(np.floor(x1)), float(np.floor(y1))), (float(np.ceil(x2)), float(np.ceil(y2)))


def _buffer_polygon(line: PointLike, radius: float, max_vertices: int = 40) -> tuple[tuple[float, float], ...]:
    """An outline around a polyline (both sides offset by ``radius``), as an annotator would draw it."""
    line = np.asarray(line, np.float64)
    step = max(1, int(np.ceil(len(line) / (max_vertices / 2))))
    pts = line[::step]
    if not np.allclose(pts[-1], line[-1]):
        pts = np.vstack([pts, line[-1]])
    if len(pts) < 2:
        # A wire cut down to one vertex (np.gradient needs two): outline it as a square of side 2·radius.
        (x, y), r = pts[0], radius
        return tuple(
            (float(a), float(b)) for a, b in np.round([(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)])
        )
    d = np.gradient(pts, axis=0)
    n = np.stack([-d[:, 1], d[:, 0]], 1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    # End caps: push the first and last vertices outward along the line too.
    tangent_start = (pts[0] - pts[1]) / max(np.linalg.norm(pts[0] - pts[1]), 1e-9)
    tangent_end = (pts[-1] - pts[-2]) / max(np.linalg.norm(pts[-1] - pts[-2]), 1e-9)
    left = pts + radius * n
    right = pts - radius * n
    left[0] += radius * tangent_start
    right[0] += radius * tangent_start
    left[-1] += radius * tangent_end
    right[-1] += radius * tangent_end
    ring = np.round(np.vstack([left, right[::-1]]))  # clamped to the image by the caller, after any shift
    return tuple((float(x), float(y)) for x, y in ring)


def _smooth_path(rng: Rng, start: PointLike, length: float, angle: float, curl: float, n: int = 60) -> Points:
    """A smooth random curve (a wire lying on the patient) starting at ``start``."""
    turns = np.cumsum(rng.normal(0.0, curl, n)) + angle
    turns = np.convolve(turns, np.ones(7) / 7, mode="same")
    step = length / n
    pts = np.cumsum(np.stack([np.cos(turns), np.sin(turns)], 1) * step, axis=0) + np.asarray(start)
    return np.vstack([np.asarray(start, np.float64)[None], pts])


def _inside(path: Points, width: int, height: int, margin: float) -> Points:
    """Truncate a path where it first leaves the image (wires running off the film end at the edge)."""
    ok = (
        (path[:, 0] >= margin)
        & (path[:, 0] <= width - 1 - margin)
        & (path[:, 1] >= margin)
        & (path[:, 1] <= height - 1 - margin)
    )
    if ok.all():
        return path
    first_bad = int(np.argmin(ok))
    return path[: max(first_bad, 2)]


# --- objects ---------------------------------------------------------------------------------------------


def _round_object(
    kind_name: str,
    c: tuple[float, float],
    draw: Callable[[_Canvas], None],
    radius_x: float,
    radius_y: float,
    density: float,
    blur: float,
    width: int,
    height: int,
    rng: Rng,
) -> Patch:
    cv = _Canvas(c[0] - radius_x, c[1] - radius_y, c[0] + radius_x, c[1] + radius_y)
    draw(cv)
    d = cv.finish(density, blur)
    box = _support_box(d, cv.x0, cv.y0, rng.uniform(0.0, 1.5))
    return Patch(d, cv.x0, cv.y0, kind_name, (Annotation(ELLIPSE, _outward_box(box)),))


def button(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> Patch:
    r = rng.uniform(0.5, 1.0) * ppc
    ry = r * rng.uniform(0.85, 1.0)  # a slightly tilted button, axis-aligned
    metal = rng.random() < 0.3
    holes = 4 if rng.random() < 0.5 else 2
    angle = rng.uniform(0, np.pi)

    def draw(cv: _Canvas) -> None:
        cv.ellipse(c, (r, ry), 0, 0.85)
        cv.ellipse(c, (r, ry), 0, 1.0, thickness=0.16 * r)  # raised rim
        for k in range(holes):
            a = angle + 2 * np.pi * k / holes
            cv.circle((c[0] + 0.33 * r * np.cos(a), c[1] + 0.33 * ry * np.sin(a)), max(0.6, 0.14 * r), 0.0)

    dens = rng.uniform(1.4, 2.2) if metal else rng.uniform(0.3, 0.75)
    return _round_object("button", c, draw, r, ry, dens, 0.6, width, height, rng)


def snap(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> Patch:
    r = rng.uniform(0.5, 0.8) * ppc

    def draw(cv: _Canvas) -> None:
        cv.circle(c, r, 1.0)
        cv.circle(c, 0.62 * r, 0.45)
        cv.circle(c, 0.28 * r, 1.2)

    return _round_object("snap", c, draw, r, r, rng.uniform(1.0, 1.8), 0.6, width, height, rng)


def coin(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> Patch:
    r = rng.uniform(0.9, 1.4) * ppc
    relief = [(rng.uniform(-0.5, 0.5) * r, rng.uniform(-0.5, 0.5) * r, rng.uniform(0.1, 0.3) * r) for _ in range(5)]

    def draw(cv: _Canvas) -> None:
        cv.circle(c, r, 0.9)
        cv.circle(c, r, 1.0, thickness=0.1 * r)
        for dx, dy, rr in relief:  # embossing: faint density variation across the face
            cv.circle((c[0] + dx, c[1] + dy), rr, 0.95)

    return _round_object("coin", c, draw, r, r, rng.uniform(2.0, 3.2), 0.6, width, height, rng)


def ring(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> Patch:
    r = rng.uniform(0.6, 1.15) * ppc
    tilt = rng.uniform(0.45, 1.0)
    rx, ry = (r, r * tilt) if rng.random() < 0.5 else (r * tilt, r)
    band = rng.uniform(0.15, 0.25) * ppc
    gem = rng.random() < 0.4

    def draw(cv: _Canvas) -> None:
        cv.ellipse(c, (rx - band / 2, ry - band / 2), 0, 1.0, thickness=band)
        if gem:
            cv.circle((c[0], c[1] - ry + band / 2), 0.3 * ppc, 1.0)

    return _round_object(
        "ring", c, draw, rx + 0.3 * ppc, ry + 0.3 * ppc, rng.uniform(2.0, 3.2), 0.6, width, height, rng
    )


def wire_along(
    rng: Rng,
    path: Points,
    ppc: float,
    width: int,
    height: int,
    kind_name: str = "wire",
    connector_at_start: bool = False,
) -> Patch:
    """A lead wire along ``path``: a dense copper core inside a faint insulating sheath."""
    core = rng.uniform(0.12, 0.22) * ppc
    sheath = core + rng.uniform(0.15, 0.3) * ppc
    extent = sheath + 1.2 * ppc if connector_at_start else sheath
    cv = _Canvas(
        path[:, 0].min() - extent, path[:, 1].min() - extent, path[:, 0].max() + extent, path[:, 1].max() + extent
    )
    cv.polyline(path, 0.25, max(sheath, 1.0))
    cv.polyline(path, 1.0, max(core, 0.8))
    connector_half_width = 0.0
    if connector_at_start:
        # The clip connector that grips the electrode stud: a dense block along the wire's first centimetre.
        direction = path[min(6, len(path) - 1)] - path[0]
        direction /= max(np.linalg.norm(direction), 1e-9)
        length, half_w = rng.uniform(1.0, 1.6) * ppc, rng.uniform(0.3, 0.45) * ppc
        normal = np.array([-direction[1], direction[0]])
        corners = np.array(
            [
                path[0] - half_w * normal,
                path[0] + half_w * normal,
                path[0] + half_w * normal + length * direction,
                path[0] - half_w * normal + length * direction,
            ]
        )
        cv.polygon(corners, 0.8)
        connector_half_width = half_w
    d = cv.finish(rng.uniform(1.3, 2.2), 0.6)
    radius = max(sheath / 2, connector_half_width) + PAD + 1.0
    poly = _buffer_polygon(path, radius)
    return Patch(d, cv.x0, cv.y0, kind_name, (Annotation(POLYGON, poly),))


def loose_wire(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> Patch:
    length = rng.uniform(8.0, 22.0) * ppc
    path = _smooth_path(rng, c, length, rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.15))
    path = _inside(path, width, height, 1.5 * ppc)
    return wire_along(rng, path, ppc, width, height)


def electrode(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> list[Patch]:
    """ECG electrode: faint foam pad with a dense gel ring and metal stud; usually with its lead."""
    pad_r = rng.uniform(1.5, 2.0) * ppc
    stud_r = rng.uniform(0.4, 0.55) * ppc

    def draw(cv: _Canvas) -> None:
        cv.circle(c, pad_r, 0.08)
        cv.circle(c, 0.55 * pad_r, 0.18)
        cv.circle(c, stud_r, 1.0)
        cv.circle(c, 0.45 * stud_r, 0.6)

    patches = [_round_object("ecg_electrode", c, draw, pad_r, pad_r, rng.uniform(1.8, 2.6), 0.6, width, height, rng)]
    if rng.random() < 0.7:
        length = rng.uniform(6.0, 16.0) * ppc
        # Leads run away from the chest centre, towards the edge of the film.
        away = np.arctan2(c[1] - height * 0.4, c[0] - width / 2) + rng.normal(0, 0.5)
        path = _smooth_path(rng, c, length, away, rng.uniform(0.03, 0.1))
        path = _inside(path, width, height, 1.5 * ppc)
        if len(path) >= 3:
            patches.append(wire_along(rng, path, ppc, width, height, "ecg_lead", connector_at_start=True))
    return patches


def _rect_object(
    kind_name: str,
    outline: list[tuple[Points, float, float, bool]],
    fills: list[tuple[Points, float]],
    density: float,
    rng: Rng,
    width: int,
    height: int,
) -> Patch:
    allpts = np.vstack([o[0] for o in outline] + [f[0] for f in fills])
    cv = _Canvas(allpts[:, 0].min() - 1, allpts[:, 1].min() - 1, allpts[:, 0].max() + 1, allpts[:, 1].max() + 1)
    for pts, value in fills:
        cv.polygon(pts, value)
    for pts, value, thick, closed in outline:
        cv.polyline(pts, value, thick, closed)
    d = cv.finish(density, 0.5)
    box = _support_box(d, cv.x0, cv.y0, rng.uniform(0.0, 1.5))
    return Patch(d, cv.x0, cv.y0, kind_name, (Annotation(RECTANGLE, _outward_box(box)),))


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 12) -> Points:
    a = np.linspace(a0, a1, n)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def paper_clip(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> Patch:
    L = rng.uniform(2.8, 5.0) * ppc
    w = L * rng.uniform(0.26, 0.32)
    wire = max(0.12 * ppc, 0.9)
    # A "gem" clip: outer loop, middle turn, inner loop, in local coordinates along its long axis u.
    ro, rm, ri = 0.5 * w, 0.4 * w, 0.3 * w
    path = np.vstack(
        [
            [[0.78 * L, 0.5 * w]],
            [[ro, 0.5 * w]],
            _arc(ro, 0.0, ro, np.pi / 2, 3 * np.pi / 2),
            [[L - rm, -0.5 * w]],
            _arc(L - rm, -0.5 * w + rm, rm, -np.pi / 2, np.pi / 2),
            [[0.2 * L + ri, -0.5 * w + 2 * rm]],
            _arc(0.2 * L + ri, -0.5 * w + 2 * rm - ri, ri, np.pi / 2, 3 * np.pi / 2),
            [[0.7 * L, -0.5 * w + 2 * rm - 2 * ri]],
        ]
    )
    path = path - [L / 2, 0.0]
    pts = _rot(path, rng.uniform(0, np.pi), c)
    return _rect_object("paper_clip", [(pts, 1.0, wire, False)], [], rng.uniform(2.4, 3.6), rng, width, height)


def safety_pin(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> Patch:
    L = rng.uniform(2.5, 5.5) * ppc
    w = L * rng.uniform(0.16, 0.22)
    wire = max(0.1 * ppc, 0.9)
    coil_r = 0.22 * w
    open_angle = np.deg2rad(rng.uniform(15, 35)) if rng.random() < 0.25 else 0.0
    leg_a = np.array([[coil_r, -coil_r], [0.88 * L, -0.4 * w]])
    tip = np.array([0.86 * L * np.cos(open_angle), 0.86 * L * np.sin(open_angle) + 0.4 * w * np.cos(open_angle)])
    leg_b = np.array([[coil_r, coil_r], tip])
    coil = _arc(0.0, 0.0, coil_r, 0, 2 * np.pi, 16)
    head = np.array([[0.8 * L, -0.62 * w], [L, -0.62 * w], [L, 0.55 * w], [0.8 * L, 0.55 * w]])
    ang, centre = rng.uniform(0, np.pi), c
    shift = np.array([L / 2, 0.0])
    outline = [
        (_rot(leg_a - shift, ang, centre), 1.0, wire, False),
        (_rot(leg_b - shift, ang, centre), 1.0, wire, False),
        (_rot(coil - shift, ang, centre), 1.0, wire, True),
    ]
    fills = [(_rot(head - shift, ang, centre), 1.2)]
    return _rect_object("safety_pin", outline, fills, rng.uniform(2.2, 3.4), rng, width, height)


def hook_clasp(rng: Rng, c: tuple[float, float], ppc: float, width: int, height: int) -> Patch:
    """Bra hook-and-eye clasp: two or three short dense bars side by side, with their eyes."""
    n = int(rng.integers(2, 4))
    bar_h, bar_w, gap = rng.uniform(0.9, 1.4) * ppc, rng.uniform(0.25, 0.4) * ppc, rng.uniform(0.4, 0.6) * ppc
    total = n * bar_w + (n - 1) * gap
    ang = rng.normal(0, 0.15)
    outline: list[tuple[Points, float, float, bool]] = []
    fills: list[tuple[Points, float]] = []
    for k in range(n):
        x = -total / 2 + k * (bar_w + gap)
        bar = np.array([[x, -bar_h / 2], [x + bar_w, -bar_h / 2], [x + bar_w, bar_h / 2], [x, bar_h / 2]])
        fills.append((_rot(bar, ang, c), 1.0))
        eye = _arc(x + bar_w / 2, bar_h / 2 + 0.2 * ppc, 0.22 * ppc, 0, 2 * np.pi, 12)
        outline.append((_rot(eye, ang, c), 0.8, max(0.08 * ppc, 0.9), True))
    return _rect_object("hook_clasp", outline, fills, rng.uniform(1.8, 2.8), rng, width, height)


def necklace(
    rng: Rng, c: tuple[float, float] | None, ppc: float, width: int, height: int, neck_x: float, neck_top: float
) -> list[Patch]:
    """A chain hanging from the neck in a catenary-like U, beads or links along it, often with a pendant."""
    half = rng.uniform(4.0, 9.0) * ppc
    depth = rng.uniform(6.0, 16.0) * ppc
    y_top = max(neck_top, 1.2 * ppc + PAD)  # below the edge margin, or the path would be cut at its start
    t = np.linspace(-1.0, 1.0, 80)
    path = np.stack(
        [
            neck_x + half * t + rng.normal(0, 0.3) * ppc * t**2,
            y_top + depth * (1 - np.cosh(1.3 * t) / np.cosh(1.3)) / (1 - 1 / np.cosh(1.3)),
        ],
        1,
    )
    path = _inside(path, width, height, 1.0 * ppc)
    link = rng.uniform(0.18, 0.3) * ppc
    spacing = link * rng.uniform(1.6, 2.4)
    beads = rng.random() < 0.4
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    at = np.arange(0.0, s[-1], spacing)
    centres = np.stack([np.interp(at, s, path[:, 0]), np.interp(at, s, path[:, 1])], 1)
    tangent = np.gradient(path, axis=0)
    link_angles = np.degrees(np.arctan2(np.interp(at, s, tangent[:, 1]), np.interp(at, s, tangent[:, 0])))
    extent = 2 * link + 1
    cv = _Canvas(
        path[:, 0].min() - extent, path[:, 1].min() - extent, path[:, 0].max() + extent, path[:, 1].max() + extent
    )
    for k, p in enumerate(centres):
        if beads:
            cv.circle(p, link * 1.1, 1.0)
        else:  # alternating links seen face-on and edge-on
            cv.ellipse(
                p, (link * 1.3, link * (0.8 if k % 2 else 0.35)), link_angles[k], 1.0, thickness=max(0.6, 0.35 * link)
            )
    d = cv.finish(rng.uniform(1.6, 2.6), 0.5)
    poly = _buffer_polygon(path, 1.3 * link + PAD + 1.0)
    patches = [Patch(d, cv.x0, cv.y0, "necklace", (Annotation(POLYGON, poly),))]
    if rng.random() < 0.6 and len(path) > 10:
        low = path[int(np.argmax(path[:, 1]))]
        pc = (low[0], low[1] + rng.uniform(0.9, 1.5) * ppc)
        if pc[1] + 1.5 * ppc < height - 2:
            patches.append(coin(rng, pc, ppc * rng.uniform(0.6, 0.9), width, height))
            patches[-1].kind_name = "pendant"
    return patches


FOREIGN_OBJECTS: dict[str, tuple[float, Callable[..., Any]]] = {
    # name: (weight, renderer)
    "button": (0.18, button),
    "snap": (0.11, snap),
    "coin": (0.08, coin),
    "ring": (0.05, ring),
    "ecg_electrode": (0.15, electrode),
    "wire": (0.09, loose_wire),
    "paper_clip": (0.11, paper_clip),
    "safety_pin": (0.10, safety_pin),
    "hook_clasp": (0.05, hook_clasp),
    "necklace": (0.08, necklace),
}


# --- look-alikes: bright structures that are NOT foreign objects (drawn in both classes) ----------------


def distractors(
    rng: Rng, height: int, width: int, ppc: float, lung: FloatArray, lung_box: Box, cx: float
) -> tuple[FloatArray, list[str]]:
    """Density of calcified granulomas, nipple shadows, costal-cartilage calcification and a side marker."""
    out = np.zeros((height, width), np.float32)
    names: list[str] = []
    x1, y1, x2, y2 = lung_box
    lung_pts = np.argwhere(lung[::4, ::4] > 0.7) * 4
    if rng.random() < 0.45 and len(lung_pts):
        names.append("granulomas")
        for _ in range(int(rng.integers(1, 4))):
            yx = lung_pts[rng.integers(len(lung_pts))]
            r = rng.uniform(0.12, 0.35) * ppc
            cv2.circle(
                out, (int(yx[1] * 4), int(yx[0] * 4)), max(1, int(r * 4)), rng.uniform(0.5, 1.0), -1, cv2.LINE_8, 2
            )
    if rng.random() < 0.35:
        names.append("nipple_shadows")
        ny = y2 - rng.uniform(0.15, 0.3) * (y2 - y1)
        for side in (-1, 1):
            if rng.random() < 0.85:
                nx = cx + side * rng.uniform(0.25, 0.38) * (x2 - x1)
                nip = np.zeros_like(out)
                cv2.circle(
                    nip,
                    (int(nx * 4), int((ny + rng.normal(0, 0.5) * ppc) * 4)),
                    int(rng.uniform(0.4, 0.65) * ppc * 4),
                    1.0,
                    -1,
                    cv2.LINE_8,
                    2,
                )
                out += rng.uniform(0.08, 0.16) * cv2.GaussianBlur(nip, (0, 0), 0.12 * ppc)
    if rng.random() < 0.3:
        names.append("costal_cartilage_calcification")
        for side in (-1, 1):
            for _ in range(int(rng.integers(2, 6))):
                px = cx + side * rng.uniform(0.12, 0.3) * (x2 - x1)
                py = y1 + rng.uniform(0.3, 0.85) * (y2 - y1)
                axes = (int(rng.uniform(0.3, 0.9) * ppc * 4), int(rng.uniform(0.15, 0.35) * ppc * 4))
                cv2.ellipse(
                    out,
                    (int(px * 4), int(py * 4)),
                    axes,
                    rng.uniform(-30, 30),
                    0,
                    360,
                    rng.uniform(0.2, 0.45),
                    -1,
                    cv2.LINE_8,
                    2,
                )
    if rng.random() < 0.35:
        names.append("side_marker")
        letter = "L" if rng.random() < 0.5 else "R"
        scale = 1.6 * ppc / 22.0
        corner_x = rng.uniform(0.05, 0.15) * width if rng.random() < 0.5 else rng.uniform(0.8, 0.9) * width
        corner_y = rng.uniform(0.05, 0.2) * height
        text = np.zeros((height, width), np.uint8)  # putText draws on 8-bit images only
        cv2.putText(
            text,
            letter,
            (int(corner_x), int(corner_y)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            255,
            max(1, int(0.25 * ppc)),
            cv2.LINE_8,
        )
        out += text.astype(np.float32) * (rng.uniform(1.0, 2.0) / 255.0)
    return np.asarray(cv2.GaussianBlur(out, (5, 5), 0.6), np.float32), names
