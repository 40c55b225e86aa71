"""Generator v2's radiopaque objects: drawing, global blur, exact support and the annotation of one object.

Kinds and sizes follow what Object-CXR (JF Healthcare, MIDL 2020) shows on frontal radiographs: many small
round things (studs and small buttons ~0.4–0.8 cm, i.e. about 1 % of a 40 cm image side; shirt buttons, snaps),
coins, rings and earrings, ECG electrodes (faint foam pad, dense stud) with lead wires and clip connectors, thin
long wires, paper clips, safety pins, hair pins, bra hook-and-eye clasps, zippers, chains and necklaces, and
tubing with a radiopaque stripe. Annotation types follow the challenge: ellipses for round things, rectangles for
clips, pins and clasps, polygons for wires, chains, zippers and tubes. Support devices (electrodes, leads, tubes)
are drawn but never annotated (:data:`SUPPORT_DEVICES`), as in Object-CXR.

Every object is drawn 4× supersampled in its own small patch (:class:`models.synth.objects._Canvas`) with unit
peak. :func:`finish` then applies the image's own blur (detector and motion unsharpness, the same σ as the
anatomy's), cuts below 2 % of the peak so the support is exact and finite, scales to the object's density and
computes the annotation from the pixels the object really covers: the support's bounding box (plus 0–1 px of
annotator slack) for rectangles and ellipses, and for polygons an outline around the centre line at the largest
distance of any support pixel from it.

Densities are in the units of :mod:`models.synth.anatomy` (a rib adds ~0.15, a clavicle ~0.25, the mediastinum
~1). Metal is drawn with a peak of 0.8–3 (dense to saturated on any window), plastic and foam with 0.12–0.5
(faint: about the contrast of a rib, a few times the noise), so the objects' contrast over the local tissue
runs from faint to saturated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from models.datasets import ELLIPSE, POLYGON, RECTANGLE, Annotation
from models.synth.objects import _arc, _buffer_polygon, _Canvas, _rot, _smooth_path

FloatArray = npt.NDArray[np.float32]
Points = npt.NDArray[np.float64]
Rng = np.random.Generator

SUPPORT_CUT = 0.02  # pixels below this share of an object's peak are not part of it (exact, finite support)


@dataclass
class Drawn:
    """One object before the image's blur: unit-peak density with its top-left pixel at (x0, y0)."""

    density: FloatArray
    x0: int
    y0: int
    kind: str
    shape: int  # RECTANGLE, ELLIPSE or POLYGON: the annotation type Object-CXR uses for this kind
    path: Points | None = None  # centre line (image pixels) of polygon kinds
    metal: bool = True


@dataclass
class Placed:
    """One finished object: density to add at (x0, y0), its annotation shape and its exact support's box."""

    density: FloatArray
    x0: int
    y0: int
    kind: str
    annotation: Annotation
    support_box: tuple[int, int, int, int]  # x1, y1, x2, y2 of the pixels it covers (inclusive)
    metal: bool

    @property
    def shape_hw(self) -> tuple[int, int]:
        h, w = self.density.shape
        return int(h), int(w)


def log_uniform(rng: Rng, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def object_peak(rng: Rng, metal: bool) -> float:
    """Peak density of one object: metal dense to saturated, plastic/foam faint (see the module docstring)."""
    return log_uniform(rng, 0.8, 3.0) if metal else log_uniform(rng, 0.12, 0.5)


def _done(cv: _Canvas, kind: str, shape: int, path: Points | None = None, metal: bool = True) -> Drawn:
    density: FloatArray = cv.finish(1.0, 0.35)
    return Drawn(density, cv.x0, cv.y0, kind, shape, path, metal)


def _canvas_around(points: Points, margin: float) -> _Canvas:
    return _Canvas(
        float(points[:, 0].min() - margin),
        float(points[:, 1].min() - margin),
        float(points[:, 0].max() + margin),
        float(points[:, 1].max() + margin),
    )


# --- round things ----------------------------------------------------------------------------------------------


def button(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """Shirt button, 0.8–2 cm, plastic (faint) or metal, 2 or 4 holes and a raised rim; seen slightly tilted."""
    r = rng.uniform(0.4, 1.0) * ppc
    ry = r * rng.uniform(0.8, 1.0)
    tilt = rng.uniform(0.0, 180.0)
    holes = 4 if rng.random() < 0.5 else 2
    a0 = rng.uniform(0, np.pi)
    cv = _Canvas(c[0] - r, c[1] - r, c[0] + r, c[1] + r)
    cv.ellipse(c, (r, ry), tilt, 0.8)
    cv.ellipse(c, (r, ry), tilt, 1.0, thickness=0.15 * r)
    for k in range(holes):
        a = a0 + 2 * np.pi * k / holes
        cv.circle((c[0] + 0.35 * r * np.cos(a), c[1] + 0.35 * ry * np.sin(a)), max(0.5, 0.13 * r), 0.0)
    return _done(cv, "button", ELLIPSE, metal=rng.random() < 0.35)


def stud(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """Small metal stud, rivet or tiny button: 0.35–0.7 cm (about 1 % of the image side), dense, sometimes a dimple."""
    r = rng.uniform(0.18, 0.35) * ppc
    cv = _Canvas(c[0] - r, c[1] - r, c[0] + r, c[1] + r)
    cv.circle(c, r, 1.0)
    if rng.random() < 0.5:
        cv.circle(c, 0.4 * r, 0.6)
    return _done(cv, "stud", ELLIPSE)


def snap(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """Snap fastener, 0.7–1.3 cm: a dense ring, a thinner flange and a dense central post."""
    r = rng.uniform(0.35, 0.65) * ppc
    cv = _Canvas(c[0] - r, c[1] - r, c[0] + r, c[1] + r)
    cv.circle(c, r, 0.9)
    cv.circle(c, 0.65 * r, 0.4)
    cv.circle(c, 0.3 * r, 1.0)
    return _done(cv, "snap", ELLIPSE)


def coin(rng: Rng, c: tuple[float, float], ppc: float, kind: str = "coin", scale: float = 1.0) -> Drawn:
    """Coin or medallion, 1.6–2.6 cm: dense disc with a rim and faint embossing."""
    r = rng.uniform(0.8, 1.3) * ppc * scale
    cv = _Canvas(c[0] - r, c[1] - r, c[0] + r, c[1] + r)
    cv.circle(c, r, 0.9)
    cv.circle(c, r, 1.0, thickness=0.1 * r)
    for _ in range(5):
        dx, dy = rng.uniform(-0.5, 0.5, 2) * r
        cv.circle((c[0] + dx, c[1] + dy), rng.uniform(0.1, 0.3) * r, 0.96)
    return _done(cv, kind, ELLIPSE)


def ring(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """Finger ring or hoop earring, 0.8–2 cm, tilted into an ellipse, sometimes with a stone."""
    r = rng.uniform(0.4, 1.0) * ppc
    tilt = rng.uniform(0.4, 1.0)
    rx, ry = (r, r * tilt) if rng.random() < 0.5 else (r * tilt, r)
    band = max(0.12 * ppc, 0.8)
    cv = _Canvas(c[0] - rx - band, c[1] - ry - band, c[0] + rx + band, c[1] + ry + band)
    cv.ellipse(c, (rx, ry), 0.0, 1.0, thickness=band)
    if rng.random() < 0.35:
        cv.circle((c[0], c[1] - ry), 0.25 * ppc, 1.0)
    return _done(cv, "ring", ELLIPSE)


def earring(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """Earring: a small stud with a hanging drop or hoop, 0.5–1.5 cm."""
    r = rng.uniform(0.15, 0.3) * ppc
    drop = rng.uniform(0.3, 1.0) * ppc
    cv = _Canvas(c[0] - drop, c[1] - r, c[0] + drop, c[1] + r + 2 * drop)
    cv.circle(c, r, 1.0)
    if rng.random() < 0.5:
        cv.ellipse((c[0], c[1] + r + drop * 0.6), (drop * 0.5, drop * 0.6), 0.0, 1.0, thickness=max(0.1 * ppc, 0.8))
    else:
        cv.polyline(np.array([c, (c[0], c[1] + r + drop)]), 1.0, max(0.08 * ppc, 0.8))
        cv.circle((c[0], c[1] + r + drop), 0.3 * drop, 1.0)
    return _done(cv, "earring", ELLIPSE)


def electrode(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """ECG electrode: faint foam pad 2.5–4 cm, a gel ring and a dense metal stud 0.8–1.1 cm."""
    pad = rng.uniform(1.25, 2.0) * ppc
    stud_r = rng.uniform(0.4, 0.55) * ppc
    cv = _Canvas(c[0] - pad, c[1] - pad, c[0] + pad, c[1] + pad)
    cv.circle(c, pad, 0.07)
    cv.circle(c, 0.55 * pad, 0.15)
    cv.circle(c, stud_r, 1.0)
    cv.circle(c, 0.45 * stud_r, 0.6)
    # Many electrodes have a carbon (radiolucent) stud and clip: those are faint all over.
    return _done(cv, "ecg_electrode", ELLIPSE, metal=rng.random() < 0.7)


# --- rectangles -----------------------------------------------------------------------------------------------


def paper_clip(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """A 'gem' paper clip 2.5–5 cm at any angle: outer loop, middle turn, inner loop."""
    length = rng.uniform(2.5, 5.0) * ppc
    w = length * rng.uniform(0.26, 0.32)
    ro, rm, ri = 0.5 * w, 0.4 * w, 0.3 * w
    path = np.vstack(
        [
            [[0.78 * length, 0.5 * w]],
            [[ro, 0.5 * w]],
            _arc(ro, 0.0, ro, np.pi / 2, 3 * np.pi / 2),
            [[length - rm, -0.5 * w]],
            _arc(length - rm, -0.5 * w + rm, rm, -np.pi / 2, np.pi / 2),
            [[0.2 * length + ri, -0.5 * w + 2 * rm]],
            _arc(0.2 * length + ri, -0.5 * w + 2 * rm - ri, ri, np.pi / 2, 3 * np.pi / 2),
            [[0.7 * length, -0.5 * w + 2 * rm - 2 * ri]],
        ]
    ) - [length / 2, 0.0]
    pts = _rot(path, rng.uniform(0, np.pi), c)
    cv = _canvas_around(pts, 2.0)
    cv.polyline(pts, 1.0, max(0.1 * ppc, 0.8))
    return _done(cv, "paper_clip", RECTANGLE)


def safety_pin(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """Safety pin 2.5–5.5 cm: coil, two legs, clasp head; sometimes open."""
    length = rng.uniform(2.5, 5.5) * ppc
    w = length * rng.uniform(0.16, 0.22)
    wire = max(0.09 * ppc, 0.8)
    coil_r = 0.22 * w
    opening = np.deg2rad(rng.uniform(15, 35)) if rng.random() < 0.25 else 0.0
    leg_a = np.array([[coil_r, -coil_r], [0.88 * length, -0.4 * w]])
    tip = [0.86 * length * np.cos(opening), 0.86 * length * np.sin(opening) + 0.4 * w * np.cos(opening)]
    leg_b = np.array([[coil_r, coil_r], tip])
    coil = _arc(0.0, 0.0, coil_r, 0, 2 * np.pi, 16)
    head = np.array([[0.8, -0.62], [1.0, -0.62], [1.0, 0.55], [0.8, 0.55]]) * [length, w]
    angle, shift = rng.uniform(0, np.pi), np.array([length / 2, 0.0])
    parts = [_rot(p - shift, angle, c) for p in (leg_a, leg_b, coil, head)]
    cv = _canvas_around(np.vstack(parts), 2.0)
    cv.polygon(parts[3], 1.0)
    cv.polyline(parts[0], 0.9, wire)
    cv.polyline(parts[1], 0.9, wire)
    cv.polyline(parts[2], 0.9, wire, closed=True)
    return _done(cv, "safety_pin", RECTANGLE)


def hair_pin(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """Bobby pin 4–6 cm: a long thin U, one leg wavy."""
    length = rng.uniform(4.0, 6.0) * ppc
    gap = rng.uniform(0.15, 0.25) * ppc
    t = np.linspace(0.0, 1.0, 24)
    straight = np.stack([t * length, np.full_like(t, -gap)], 1)
    wavy = np.stack([t * length, gap + 0.12 * ppc * np.sin(t * 10 * np.pi) * (t > 0.2)], 1)
    bend = _arc(0.0, 0.0, gap, np.pi / 2, 3 * np.pi / 2, 8)
    path = np.vstack([straight[::-1], bend[::-1], wavy]) - [length / 2, 0.0]
    pts = _rot(path, rng.uniform(0, np.pi), c)
    cv = _canvas_around(pts, 2.0)
    cv.polyline(pts, 1.0, max(0.08 * ppc, 0.8))
    return _done(cv, "hair_pin", RECTANGLE)


def hook_clasp(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """Bra hook-and-eye clasp: two or three short dense bars side by side, with their eyes."""
    n = int(rng.integers(2, 4))
    bar_h, bar_w, gap = rng.uniform(0.9, 1.4) * ppc, rng.uniform(0.25, 0.4) * ppc, rng.uniform(0.4, 0.6) * ppc
    total = n * bar_w + (n - 1) * gap
    angle = float(rng.normal(0, 0.2))
    bars, eyes = [], []
    for k in range(n):
        x = -total / 2 + k * (bar_w + gap)
        bars.append(
            _rot(np.array([[x, -bar_h / 2], [x + bar_w, -bar_h / 2], [x + bar_w, bar_h / 2], [x, bar_h / 2]]), angle, c)
        )
        eyes.append(_rot(_arc(x + bar_w / 2, bar_h / 2 + 0.2 * ppc, 0.22 * ppc, 0, 2 * np.pi, 12), angle, c))
    cv = _canvas_around(np.vstack(bars + eyes), 2.0)
    for bar in bars:
        cv.polygon(bar, 1.0)
    for eye in eyes:
        cv.polyline(eye, 0.8, max(0.08 * ppc, 0.8), closed=True)
    return _done(cv, "hook_clasp", RECTANGLE)


# --- polygons: things along a centre line ----------------------------------------------------------------------


def wire_on(path: Points, ppc: float, rng: Rng, kind: str = "wire", connector: bool = False) -> Drawn:
    """A lead or loose wire along ``path``: dense copper core in a faint sheath; an ECG lead starts with its clip."""
    core = max(rng.uniform(0.08, 0.18) * ppc, 0.7)
    sheath = core + rng.uniform(0.12, 0.25) * ppc
    cv = _canvas_around(path, sheath + (1.4 * ppc if connector else 1.0))
    cv.polyline(path, 0.22, max(sheath, 1.0))
    cv.polyline(path, 1.0, core)
    if connector:
        direction = path[min(6, len(path) - 1)] - path[0]
        direction = direction / max(float(np.linalg.norm(direction)), 1e-9)
        normal = np.array([-direction[1], direction[0]])
        length, half = rng.uniform(1.0, 1.5) * ppc, rng.uniform(0.25, 0.4) * ppc
        start, along = path[0], length * direction
        corners = np.array(
            [start - half * normal, start + half * normal, start + half * normal + along, start - half * normal + along]
        )
        cv.polygon(corners, 0.8)
    return _done(cv, kind, POLYGON, path)


def loose_wire(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """A loose wire, 3–14 cm, gently curved."""
    path = _smooth_path(rng, c, rng.uniform(3.0, 14.0) * ppc, rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.14), 40)
    return wire_on(path - (path.mean(0) - c), ppc, rng)


def chain(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """A chain or bracelet segment, 3–10 cm: links seen face-on and edge-on, or beads."""
    path = _smooth_path(rng, c, rng.uniform(3.0, 10.0) * ppc, rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.15), 40)
    return chain_on(path - (path.mean(0) - c), ppc, rng, "chain")


def chain_on(path: Points, ppc: float, rng: Rng, kind: str) -> Drawn:
    link = max(rng.uniform(0.12, 0.28) * ppc, 1.0)
    spacing = link * rng.uniform(1.6, 2.4)
    beads = rng.random() < 0.35
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    at = np.arange(0.0, s[-1] + 1e-9, spacing)
    centres = np.stack([np.interp(at, s, path[:, 0]), np.interp(at, s, path[:, 1])], 1)
    tangent = np.gradient(path, axis=0)
    angles = np.degrees(np.arctan2(np.interp(at, s, tangent[:, 1]), np.interp(at, s, tangent[:, 0])))
    cv = _canvas_around(path, 2 * link + 1)
    for k, p in enumerate(centres):
        if beads:
            cv.circle(p, link * 1.1, 1.0)
        else:
            axes = (link * 1.3, link * (0.8 if k % 2 else 0.35))
            cv.ellipse(p, axes, float(angles[k]), 1.0, thickness=max(0.6, 0.35 * link))
    return _done(cv, kind, POLYGON, path, metal=not beads or rng.random() < 0.5)  # plastic beads are faint


def zipper(rng: Rng, c: tuple[float, float], ppc: float) -> Drawn:
    """A zipper, 4–14 cm: two rows of small metal teeth along a line, with its slider."""
    path = _smooth_path(rng, c, rng.uniform(4.0, 14.0) * ppc, rng.uniform(0, 2 * np.pi), rng.uniform(0.01, 0.05), 40)
    path = path - (path.mean(0) - c)
    tooth = max(rng.uniform(0.12, 0.2) * ppc, 0.9)
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    at = np.arange(0.0, s[-1], tooth * 1.1)
    centres = np.stack([np.interp(at, s, path[:, 0]), np.interp(at, s, path[:, 1])], 1)
    tangent = np.gradient(path, axis=0)
    tx, ty = np.interp(at, s, tangent[:, 0]), np.interp(at, s, tangent[:, 1])
    norm = np.maximum(np.hypot(tx, ty), 1e-9)
    nx, ny = -ty / norm, tx / norm
    cv = _canvas_around(path, 2.5 * tooth + 1)
    for k, p in enumerate(centres):
        side = 1.0 if k % 2 else -1.0
        q = (p[0] + side * 0.45 * tooth * nx[k], p[1] + side * 0.45 * tooth * ny[k])
        cv.circle(q, 0.55 * tooth, 1.0)
    end = centres[-1] if len(centres) else path[-1]
    cv.circle((float(end[0]), float(end[1])), 1.6 * tooth, 1.0)
    return _done(cv, "zipper", POLYGON, path, metal=rng.random() < 0.6)  # plastic teeth are faint


def tube(rng: Rng, c: tuple[float, float], ppc: float, path: Points | None = None) -> Drawn:
    """Plastic tubing 0.4–0.8 cm wide with a radiopaque stripe along one wall (oxygen or feeding tube)."""
    if path is None:
        path = _smooth_path(rng, c, rng.uniform(5.0, 16.0) * ppc, rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.1), 40)
        path = path - (path.mean(0) - c)
    width = rng.uniform(0.4, 0.8) * ppc
    cv = _canvas_around(path, width + 1)
    cv.polyline(path, 0.25, max(width, 1.0))
    cv.polyline(path, 0.06, max(0.6 * width, 1.0))  # the lumen holds air: only the walls stay dense
    tangent = np.gradient(path, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1) / np.maximum(np.linalg.norm(tangent, axis=1)[:, None], 1e-9)
    cv.polyline(path + 0.3 * width * normal, 1.0, max(0.1 * ppc, 0.8))
    return _done(cv, "tube", POLYGON, path, metal=False)


# --- finishing: blur, exact support, annotation --------------------------------------------------------------


def _polyline_distance(shape_hw: tuple[int, int], line: Points) -> npt.NDArray[np.float32]:
    """Distance of every pixel of a patch to a polyline drawn in it (patch coordinates)."""
    h, w = shape_hw
    canvas = np.full((h, w), 255, np.uint8)
    pts = np.round(line * 4).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], False, 0, 1, cv2.LINE_8, 2)
    return np.asarray(cv2.distanceTransform(canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE), np.float32)


def finish(drawn: Drawn, peak: float, blur: float, slack: float) -> Placed:
    """Blur ``drawn`` by ``blur`` px (σ), cut it below 2 % of its peak, scale it to ``peak`` and annotate it."""
    pad = math.ceil(3.0 * blur) + 2
    density = np.pad(drawn.density, pad)
    x0, y0 = drawn.x0 - pad, drawn.y0 - pad
    if blur > 0.05:
        density = np.asarray(cv2.GaussianBlur(density, (0, 0), blur), np.float32)
    top = float(density.max())
    density = density / max(top, 1e-12)
    density[density < SUPPORT_CUT] = 0.0
    ys, xs = np.nonzero(density)
    y_lo, y_hi, x_lo, x_hi = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    density = np.ascontiguousarray(density[y_lo : y_hi + 1, x_lo : x_hi + 1] * np.float32(peak), dtype=np.float32)
    x0, y0 = x0 + x_lo, y0 + y_lo
    support = (x0, y0, x0 + x_hi - x_lo, y0 + y_hi - y_lo)
    if drawn.shape == POLYGON and drawn.path is not None:
        annotation = _outline(drawn.path, density, x0, y0)
    else:
        x1, y1, x2, y2 = support
        corners = (
            (float(math.floor(x1 - slack)), float(math.floor(y1 - slack))),
            (float(math.ceil(x2 + slack)), float(math.ceil(y2 + slack))),
        )
        annotation = Annotation(drawn.shape, corners)
    return Placed(density, x0, y0, drawn.kind, annotation, support, drawn.metal)


def _outline(path: Points, density: FloatArray, x0: int, y0: int) -> Annotation:
    """A polygon around a centre line that contains every support pixel: the line (at most 40 vertices) offset
    on both sides by the largest distance of a support pixel from that same simplified line, plus a pixel."""
    step = max(1, math.ceil(len(path) / 20))
    simple = path[::step]
    if not np.allclose(simple[-1], path[-1]):
        simple = np.vstack([simple, path[-1]])
    local = simple - [x0, y0]
    dist = _polyline_distance((density.shape[0], density.shape[1]), local)
    radius = float(dist[density > 0].max()) + 1.5
    # Where the line bends, offsetting vertices along the averaged normal falls short of the radius by 1/cos of
    # half the turn: widen by the worst turn so the outline still contains everything.
    d = np.diff(simple, axis=0)
    heading = np.arctan2(d[:, 1], d[:, 0])
    turns = np.abs((np.diff(heading) + np.pi) % (2 * np.pi) - np.pi)
    worst = float(turns.max()) if len(turns) else 0.0
    radius /= max(math.cos(min(worst, 2.0) / 2.0), 0.5)
    ring = _buffer_polygon(simple, radius, max_vertices=2 * len(simple))
    return Annotation(POLYGON, ring)


Drawer = Callable[[Rng, tuple[float, float], float], Drawn]

# Object-CXR excludes support devices from annotation: ECG electrodes, their leads and tubes are never annotated,
# over the lungs or elsewhere (they are drawn in both classes by the label-blind layer).
SUPPORT_DEVICES = frozenset({"ecg_electrode", "ecg_lead", "tube"})

# Foreign objects that are annotated when over the lung fields: kind → (weight, drawer). Weights favour the small
# round things that dominate Object-CXR, then wires, clips, pins and chains.
ANNOTATED_KINDS: dict[str, tuple[float, Drawer]] = {
    "button": (0.22, button),
    "stud": (0.12, stud),
    "snap": (0.09, snap),
    "coin": (0.06, coin),
    "ring": (0.05, ring),
    "earring": (0.03, earring),
    "wire": (0.09, loose_wire),
    "paper_clip": (0.07, paper_clip),
    "safety_pin": (0.06, safety_pin),
    "hook_clasp": (0.05, hook_clasp),
    "zipper": (0.05, zipper),
    "chain": (0.06, chain),
    "hair_pin": (0.03, hair_pin),
    "pendant": (0.02, lambda rng, c, ppc: coin(rng, c, ppc, "pendant", 0.7)),
}
