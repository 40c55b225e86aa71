"""Generator v2's anatomy: the v1 chest (:mod:`models.synth.anatomy`) plus the bright anatomy a filter picks.

A white top-hat or "brightest pixel" rule finds anything small and dense. Real chests are full of such things
that are not foreign objects, and Object-CXR leaves them unannotated: calcified granulomas inside the lungs (the
most common incidental finding, 2–8 mm, as dense as cortical bone or denser), the medial clavicle heads and the
sternoclavicular joints, calcified tracheal cartilage rings, calcified costal cartilage and costochondral
junctions, bone islands in ribs and clavicles, nipple shadows, the lower breast edges and, on AP films, the
scapulae projecting over the lateral lung fields. They are drawn here in both classes at rates independent of the
label, so none of them predicts it. The v1 chest already holds ribs (and their crossings), the spine with
pedicles and spinous processes, clavicles and humeral heads.

Portable AP films differ from PA ones in ways that matter here: the heart is magnified (larger cardiac
silhouette), the scapulae are not rotated out of the lung fields, and more of them carry monitoring devices.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from models.synth.anatomy import Chest, _blur

FloatArray = npt.NDArray[np.float32]


def _disc(layer: FloatArray, x: float, y: float, r: float, value: float) -> None:
    cv2.circle(layer, (round(x * 4), round(y * 4)), max(1, round(r * 4)), float(value), -1, cv2.LINE_8, 2)


def _ellipse(layer: FloatArray, x: float, y: float, ax: float, ay: float, angle: float, value: float) -> None:
    cv2.ellipse(
        layer,
        (round(x * 4), round(y * 4)),
        (max(1, round(ax * 4)), max(1, round(ay * 4))),
        angle,
        0,
        360,
        float(value),
        -1,
        cv2.LINE_8,
        2,
    )


def bright_anatomy(chest: Chest, rng: np.random.Generator, projection: str) -> tuple[FloatArray, list[str]]:
    """Density [H, W] of the bright non-foreign structures of one chest, and their names (for captions)."""
    H, W, ppc = chest.height, chest.width, chest.px_per_cm
    notes = chest.notes
    x1, y1, x2, y2 = chest.lung_box
    cx = chest.centre_x
    sharp = np.zeros((H, W), np.float32)  # calcium: sharp-edged
    soft = np.zeros((H, W), np.float32)  # soft tissue and bone edges: blurred more
    names: list[str] = []

    lung_pts = np.argwhere(chest.lung[::4, ::4] > 0.7) * 4
    if rng.random() < 0.5 and len(lung_pts):
        names.append("calcified_granulomas")
        for _ in range(int(rng.integers(1, 7))):
            y, x = lung_pts[rng.integers(len(lung_pts))] + rng.uniform(0, 4, 2)
            r = rng.uniform(0.1, 0.4) * ppc
            value = rng.uniform(0.25, 0.7)  # calcium: dense, yet below metal (0.8 and up)
            _disc(sharp, x, y, r, value)
            for _ in range(int(rng.integers(0, 3))):  # "popcorn" calcification: a few fused lumps
                a = rng.uniform(0, 2 * np.pi)
                _disc(sharp, x + 0.7 * r * np.cos(a), y + 0.7 * r * np.sin(a), r * rng.uniform(0.5, 0.8), value)

    for path in notes.get("clavicles", []):  # medial clavicle heads: dense, rounded, beside the manubrium
        hx, hy = float(path[0][0]), float(path[0][1])
        _ellipse(
            soft,
            hx,
            hy,
            rng.uniform(0.7, 1.0) * ppc,
            rng.uniform(0.5, 0.75) * ppc,
            rng.uniform(-20, 20),
            rng.uniform(0.12, 0.3),
        )
        _ellipse(sharp, hx, hy, rng.uniform(0.5, 0.7) * ppc, rng.uniform(0.35, 0.5) * ppc, 0.0, rng.uniform(0.1, 0.25))
    names.append("clavicle_heads")

    if "trachea" in notes and rng.random() < 0.35:
        names.append("tracheal_rings")
        tx, tw, carina = notes["trachea"]
        y = rng.uniform(0, 0.5) * ppc
        value = rng.uniform(0.06, 0.16)
        while y < carina - 0.5 * ppc:
            arc = np.stack([tx + np.linspace(-0.5, 0.5, 9) * tw, y + 0.15 * tw * np.linspace(-1, 1, 9) ** 2], 1)
            cv2.polylines(sharp, [np.round(arc * 4).astype(np.int32)], False, value, max(1, round(0.12 * ppc)), 8, 2)
            y += rng.uniform(0.35, 0.5) * ppc

    if rng.random() < 0.35:
        names.append("costal_cartilage_calcification")
        for side in (-1, 1):
            for _ in range(int(rng.integers(2, 7))):
                px = cx + side * rng.uniform(0.1, 0.32) * (x2 - x1)
                py = y1 + rng.uniform(0.25, 0.9) * (y2 - y1)
                axes = (rng.uniform(0.25, 0.8) * ppc, rng.uniform(0.12, 0.3) * ppc)
                _ellipse(sharp, px, py, axes[0], axes[1], rng.uniform(-35, 35), rng.uniform(0.15, 0.5))

    if rng.random() < 0.25:
        names.append("bone_islands")
        for _ in range(int(rng.integers(1, 3))):
            px, py = rng.uniform(x1, x2), rng.uniform(y1 - 2 * ppc, y2)
            _ellipse(
                sharp,
                px,
                py,
                rng.uniform(0.2, 0.45) * ppc,
                rng.uniform(0.15, 0.35) * ppc,
                rng.uniform(0, 180),
                rng.uniform(0.15, 0.4),
            )

    if rng.random() < 0.3:
        names.append("nipple_shadows")
        ny = y2 - rng.uniform(0.15, 0.3) * (y2 - y1)
        for side in (-1, 1):
            if rng.random() < 0.85:
                nx = cx + side * rng.uniform(0.25, 0.38) * (x2 - x1)
                _disc(soft, nx, ny + rng.normal(0, 0.5) * ppc, rng.uniform(0.4, 0.7) * ppc, rng.uniform(0.05, 0.12))

    if rng.random() < 0.3:
        names.append("breast_edges")
        for side in (-1, 1):
            bx = cx + side * rng.uniform(0.25, 0.4) * (x2 - x1)
            by = y2 - rng.uniform(0.1, 0.3) * (y2 - y1)
            layer = np.zeros((H, W), np.float32)
            _ellipse(layer, bx, by, rng.uniform(6, 8) * ppc, rng.uniform(4, 6) * ppc, side * rng.uniform(5, 25), 1.0)
            soft += rng.uniform(0.08, 0.18) * (layer * (np.arange(H)[:, None] > by - 1.5 * ppc))

    if projection == "AP" or rng.random() < 0.2:
        names.append("scapulae")
        for side in (-1, 1):
            s = np.linspace(0.0, 1.0, 14)
            edge_x = cx + side * ((x2 - x1) / 2 * rng.uniform(0.6, 0.85) + 1.5 * ppc * np.sin(s * np.pi))
            edge_y = y1 + rng.uniform(0.0, 0.08) * (y2 - y1) + s * rng.uniform(0.35, 0.5) * (y2 - y1)
            pts = np.round(np.stack([edge_x, edge_y], 1) * 4).astype(np.int32)
            cv2.polylines(soft, [pts], False, rng.uniform(0.08, 0.16), max(1, round(0.35 * ppc)), cv2.LINE_8, 2)

    if projection == "AP" and "heart" in notes:  # magnified cardiac silhouette
        hx, hy, hw = notes["heart"]
        layer = np.zeros((H, W), np.float32)
        _ellipse(layer, hx, hy, 0.6 * hw, 0.45 * hw, rng.uniform(-25, -10), 1.0)
        soft += rng.uniform(0.08, 0.16) * _blur(layer, 0.8 * ppc) * (1.0 - 0.6 * chest.lung)

    density = _blur(sharp, 0.08 * ppc) + _blur(soft, 0.25 * ppc)
    return (density * chest.body).astype(np.float32), names
