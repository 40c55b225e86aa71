"""The chest: a projected attenuation ("density") map of a frontal (PA) chest radiograph.

Density is additive along the beam, so every structure adds (bone, heart, soft tissue) or removes (air in
the lungs, trachea, gastric bubble) density; the tone curve in :mod:`models.synth.render` turns the sum into
film brightness (dense = bright). Sizes are set in centimetres through the image's pixel spacing, from
textbook adult anatomy: thorax ~30–36 cm wide, cardiothoracic ratio ~0.40–0.52, ten posterior rib arcs
whose spacing grows downwards, clavicles over the apices, vertebral bodies ~4–5 cm wide with disc spaces.

Smooth, large structures (body, heart, mediastinum, breast shadows) are drawn on a grid four times coarser
and upsampled; edges that matter (lung borders, ribs, clavicles, spine, vessels) are drawn at full size.
Everything is vectorised numpy or OpenCV drawing: ~20 ms for a 512-pixel image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

COARSE = 4  # coarse grid factor for smooth structures


@dataclass
class Chest:
    """The anatomy of one synthetic radiograph; positions in pixels of the output image."""

    height: int
    width: int
    px_per_cm: float
    density: np.ndarray  # float32 [H, W], anatomy only
    lung: np.ndarray  # float32 [H, W] in [0, 1], the lung fields
    body: np.ndarray  # float32 [H, W] in [0, 1], inside the patient
    lung_box: tuple[float, float, float, float]  # x1, y1, x2, y2 of the lung fields
    centre_x: float
    mask_name: str
    notes: dict[str, Any] = field(default_factory=dict)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    out: np.ndarray = x * x * (3.0 - 2.0 * x)
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.3:
        return img
    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(img, (k, k), sigma, borderType=cv2.BORDER_REPLICATE)


def _up(coarse: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def _pts(xy: np.ndarray) -> np.ndarray:
    """Float pixel points → OpenCV int32 points with 2 fractional bits (drawn with shift=2)."""
    return np.round(np.asarray(xy, np.float64) * 4).astype(np.int32).reshape(-1, 1, 2)


def _bone_polyline(layer: np.ndarray, xy: np.ndarray, thickness: float, marrow: float = 0.55) -> None:
    """A tubular bone seen side-on: a band whose cortex (edges) is denser than its marrow."""
    t = max(1, round(thickness))
    cv2.polylines(layer, [_pts(xy)], False, 1.0, thickness=t, lineType=cv2.LINE_8, shift=2)
    inner = round(thickness * 0.55)
    if inner >= 1:
        cv2.polylines(layer, [_pts(xy)], False, marrow, thickness=inner, lineType=cv2.LINE_8, shift=2)


def _warped_lungs(
    mask: np.ndarray, box: tuple[float, float, float, float], width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """Place a cropped lung mask into ``box`` with a slight rotation, shear and smooth elastic warp."""
    x1, y1, x2, y2 = box
    mh, mw = mask.shape
    sx, sy = (x2 - x1) / mw, (y2 - y1) / mh
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    shear = rng.uniform(-0.04, 0.04)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    # Inverse map: output pixel → mask pixel, computed on a coarse grid and upsampled (smooth anyway).
    gh, gw = max(2, height // 8), max(2, width // 8)
    gy, gx = np.meshgrid(np.linspace(0, height - 1, gh), np.linspace(0, width - 1, gw), indexing="ij")
    # Elastic part: a 4×4 random displacement field, bicubic-smooth, ~2 % of the lung size.
    amp = 0.02 * np.array([x2 - x1, y2 - y1])
    field_x = cv2.resize(rng.normal(0, 1, (4, 4)).astype(np.float32), (gw, gh), interpolation=cv2.INTER_CUBIC)
    field_y = cv2.resize(rng.normal(0, 1, (4, 4)).astype(np.float32), (gw, gh), interpolation=cv2.INTER_CUBIC)
    dx, dy = gx - cx + amp[0] * field_x, gy - cy + amp[1] * field_y
    ca, sa = np.cos(angle), np.sin(angle)
    rx, ry = ca * dx + sa * dy, -sa * dx + ca * dy
    rx = rx - shear * ry
    map_x = (rx / sx + mw / 2.0 - 0.5).astype(np.float32)
    map_y = (ry / sy + mh / 2.0 - 0.5).astype(np.float32)
    map_x = cv2.resize(map_x, (width, height), interpolation=cv2.INTER_LINEAR)
    map_y = cv2.resize(map_y, (width, height), interpolation=cv2.INTER_LINEAR)
    lungs = cv2.remap(
        mask.astype(np.float32) / 255.0, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )
    return lungs


def build_chest(height: int, width: int, rng: np.random.Generator, lung_mask: np.ndarray, mask_name: str) -> Chest:
    """Draw one chest. ``lung_mask`` is a uint8 mask cropped to the two lungs (see :mod:`lungs`)."""
    H, W = height, width
    # A 35×43 cm portrait detector, collimated a little differently each time: the image height covers
    # 36–43 cm of patient, so the lungs (~25 cm apex to costophrenic angle) fill 55–70 % of it.
    fov_cm = rng.uniform(36.0, 43.0)
    ppc = H / fov_cm
    cx = W / 2.0 + rng.normal(0.0, 0.02) * W

    # --- lung fields: where they sit fixes the rest of the anatomy ---------------------------------------
    thorax_half = rng.uniform(14.0, 17.0) * ppc  # half of a 28–34 cm wide thorax
    lung_w = 2 * thorax_half * rng.uniform(0.80, 0.90)
    lung_w = min(lung_w, 0.94 * W)
    aspect = lung_mask.shape[0] / lung_mask.shape[1]
    lung_h = max(lung_w * aspect, 22.0 * ppc) * rng.uniform(0.95, 1.12)
    top = H * rng.uniform(0.06, 0.14)
    lung_h = min(lung_h, 0.78 * H - top)
    lx1 = cx - lung_w / 2 + rng.normal(0.0, 0.01) * W
    lung_box = (lx1, top, lx1 + lung_w, top + lung_h)
    lung = _warped_lungs(lung_mask, lung_box, W, H, rng)
    lung = _blur(lung, 0.15 * ppc)
    bottom = top + lung_h

    hc, wc = (H + COARSE - 1) // COARSE, (W + COARSE - 1) // COARSE
    ys = (np.arange(hc, dtype=np.float32) + 0.5) * COARSE - 0.5
    xs = (np.arange(wc, dtype=np.float32) + 0.5) * COARSE - 0.5
    Y, X = np.meshgrid(ys, xs, indexing="ij")

    # --- body: neck, shoulders, chest wall, abdomen; thickness ~ a cylinder's chord ----------------------
    neck_half = rng.uniform(5.5, 7.0) * ppc
    shoulder_y = top - rng.uniform(0.5, 2.5) * ppc
    rise = _smoothstep((ys - (shoulder_y - 4.0 * ppc)) / (6.0 * ppc))
    half = neck_half + (thorax_half * rng.uniform(1.02, 1.10) - neck_half) * rise
    half = half * (1.0 - 0.05 * _smoothstep((ys - bottom) / (0.3 * H)))
    body_cx = cx + rng.normal(0.0, 0.01) * W
    u = (X - body_cx) / half[:, None]
    chord = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))
    thickness = 1.0 + 0.25 * _smoothstep((ys - bottom + 0.05 * H) / (0.15 * H))  # abdomen is thicker
    body_c = chord**0.8 * thickness[:, None]
    # Arms / deltoids beside the upper chest (often partly in the field).
    arm = np.zeros_like(body_c)
    if rng.random() < 0.7:
        for side in (-1, 1):
            ax = body_cx + side * (thorax_half * rng.uniform(1.05, 1.2))
            ay = shoulder_y + rng.uniform(2.0, 8.0) * ppc
            arm += 0.55 * np.exp(-(((X - ax) / (4.5 * ppc)) ** 2 + ((Y - ay) / (10.0 * ppc)) ** 2))
    body_c = body_c + arm

    # --- heart and mediastinum ---------------------------------------------------------------------------
    ctr = rng.uniform(0.40, 0.52)
    heart_w = ctr * 2 * thorax_half
    heart_cx = cx + rng.uniform(0.08, 0.18) * heart_w  # displaced to patient left = image right
    heart_cy = bottom - rng.uniform(0.18, 0.26) * lung_h
    heart = np.zeros((hc, wc), np.float32)
    cv2.ellipse(
        heart,
        (
            (heart_cx / COARSE, heart_cy / COARSE),
            (heart_w / COARSE, heart_w * rng.uniform(0.62, 0.78) / COARSE),
            rng.uniform(-25.0, -10.0),
        ),
        1.0,
        -1,
    )
    heart = _blur(heart, 0.5 * ppc / COARSE)
    # Its inferior border sits on the diaphragm and merges with the abdomen: no edge below the lungs.
    heart *= 1.0 - _smoothstep((Y - heart_cy) / (0.35 * heart_w))
    medi = np.exp(-(((X - cx) / (2.6 * ppc)) ** 4)) * _smoothstep((heart_cy - Y) / (4 * ppc))
    knob = np.exp(-(((X - cx - 2.5 * ppc) / (1.8 * ppc)) ** 2 + ((Y - top - 0.22 * lung_h) / (1.8 * ppc)) ** 2))

    # --- breast shadows (a tempting soft-tissue edge, in either class) -----------------------------------
    breast = np.zeros((hc, wc), np.float32)
    # Landmarks for later layers (generator v2 draws its bright anatomy on them); recording them draws nothing.
    notes: dict[str, Any] = {
        "shoulder_y": float(shoulder_y),
        "thorax_half": float(thorax_half),
        "heart": (float(heart_cx), float(heart_cy), float(heart_w)),
        "diaphragm_y": float(bottom),
    }
    if rng.random() < 0.4:
        notes["breast_shadows"] = True
        for side in (-1, 1):
            bx = cx + side * rng.uniform(0.42, 0.55) * lung_w / 2 * 1.3
            by = bottom - rng.uniform(0.05, 0.2) * lung_h
            cv2.ellipse(
                breast,
                (
                    (bx / COARSE, by / COARSE),
                    (rng.uniform(11, 15) * ppc / COARSE, rng.uniform(8, 12) * ppc / COARSE),
                    side * rng.uniform(5, 20),
                ),
                1.0,
                -1,
            )
        breast = (_blur(breast, 0.8 * ppc / COARSE) * rng.uniform(0.15, 0.3)).astype(np.float32)

    # Lung air removes density, least near the hila (vessels, bronchial walls) and at the bases.
    hilum_y = top + 0.45 * lung_h
    near_hilum = np.exp(-(((X - cx) / (0.28 * lung_w)) ** 2 + ((Y - hilum_y) / (0.25 * lung_h)) ** 2))
    # Apices sit under the shoulder girdle's soft tissue: less air in the beam there.
    apex = np.exp(-np.clip(Y - top, 0, None) / (0.12 * lung_h))
    air_depth = (1.0 - 0.2 * near_hilum - 0.25 * apex) * rng.uniform(0.74, 0.86)
    lung_c = cv2.resize(lung, (wc, hc), interpolation=cv2.INTER_AREA)
    # The heart lies in front of the lungs' medial bases; where the mask already carves its outline, most of
    # its density must sit outside the lung fields or it shows as a mass inside them.
    heart = heart * (1.0 - 0.75 * lung_c)
    coarse = (body_c + 0.3 * heart * rng.uniform(0.8, 1.2) + 0.2 * medi + 0.12 * knob + breast).astype(np.float32)
    density = _up(coarse, W, H)
    body = _up(np.clip(chord * 4.0, 0, 1).astype(np.float32), W, H)
    # The beam crosses more lung in the middle of each field than at its edges: a heavily blurred copy of
    # the mask stands in for lung thickness, so fields darken gradually away from the chest wall.
    depth = _blur(lung_c, 1.5 * ppc / COARSE)
    depth = depth / max(float(depth.max()), 1e-6)
    air_depth = air_depth * (0.25 + 0.75 * np.sqrt(depth))
    density -= lung * _up((air_depth * body_c).astype(np.float32), W, H)

    # Low-frequency lung texture (overlapping vessels and interstitium seen en face).
    tex = cv2.resize(
        rng.normal(0, 1, (max(2, H // 24), max(2, W // 24))).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC
    )
    density += 0.025 * tex * lung

    # --- fine structures at full resolution ----------------------------------------------------------------
    fine = np.zeros((H, W), np.float32)
    trachea_w = rng.uniform(1.6, 2.2) * ppc
    carina_y = top + rng.uniform(0.26, 0.34) * lung_h
    trachea = np.zeros((H, W), np.float32)
    tx = cx + rng.normal(0, 0.3) * ppc
    cv2.line(trachea, (int(tx * 4), 0), (int(tx * 4), int(carina_y * 4)), 1.0, int(trachea_w), cv2.LINE_8, 2)
    for side in (-1, 1):
        end = (tx + side * 0.14 * lung_w, carina_y + 0.10 * lung_h)
        cv2.line(
            trachea,
            (int(tx * 4), int(carina_y * 4)),
            (int(end[0] * 4), int(end[1] * 4)),
            0.8,
            max(1, int(trachea_w * 0.65)),
            cv2.LINE_8,
            2,
        )
    fine -= 0.16 * _blur(trachea, 0.3 * ppc)
    notes["trachea"] = (float(tx), float(trachea_w), float(carina_y))

    # Spine: vertebral bodies with denser end plates, disc spaces, pedicle rings; stacked top to bottom.
    spine = np.zeros((H, W), np.float32)
    vert_w = rng.uniform(3.8, 4.8) * ppc
    notes["vertebra_width"] = float(vert_w)
    y = -rng.uniform(0, 3.0) * ppc
    while y < H:
        vh = (2.0 + 1.0 * np.clip(y / H, 0, 1)) * ppc  # vertebrae grow downwards
        gap = 0.22 * vh
        cv2.rectangle(
            spine,
            (int((cx - vert_w / 2) * 4), int(y * 4)),
            (int((cx + vert_w / 2) * 4), int((y + vh) * 4)),
            0.8,
            -1,
            cv2.LINE_8,
            2,
        )
        cv2.rectangle(
            spine,
            (int((cx - vert_w / 2) * 4), int(y * 4)),
            (int((cx + vert_w / 2) * 4), int((y + vh) * 4)),
            1.0,
            max(1, int(0.12 * ppc)),
            cv2.LINE_8,
            2,
        )
        for side in (-1, 1):  # pedicles: small dense rings at the upper corners
            cv2.ellipse(
                spine,
                (int((cx + side * 0.32 * vert_w) * 4), int((y + 0.3 * vh) * 4)),
                (int(0.35 * ppc * 4), int(0.55 * ppc * 4)),
                0,
                0,
                360,
                1.3,
                max(1, int(0.15 * ppc)),
                cv2.LINE_8,
                2,
            )
        cv2.ellipse(
            spine,
            (int(cx * 4), int((y + 0.6 * vh) * 4)),
            (int(0.3 * ppc * 4), int(0.6 * ppc * 4)),
            0,
            0,
            360,
            1.2,
            -1,
            cv2.LINE_8,
            2,
        )  # spinous process en face
        y += vh + gap
    fine += rng.uniform(0.08, 0.13) * _blur(spine, 0.3 * ppc)

    # Ribs: posterior arcs from the spine, rising then falling to the lateral chest wall; fainter anterior
    # ribs returning medially and downwards. Spacing grows with depth.
    ribs = np.zeros((H, W), np.float32)
    ribs_front = np.zeros((H, W), np.float32)
    n_ribs = 10
    first = top - rng.uniform(0.5, 2.0) * ppc
    spacing0 = lung_h / rng.uniform(9.5, 11.0)
    rib_half_span = lung_w / 2 * rng.uniform(1.0, 1.07)
    t = np.linspace(0.0, 1.0, 24)
    for side in (-1, 1):
        y0 = first
        for k in range(n_ribs):
            spacing = spacing0 * (0.8 + 0.45 * k / n_ribs)
            drop = lung_h * rng.uniform(0.18, 0.26) * (0.7 + 0.5 * k / n_ribs)
            span = rib_half_span * (0.65 + 0.35 * min(1.0, k / 3.0))  # upper ribs are shorter
            px = cx + side * (0.45 * vert_w + t * span)
            py = y0 - 0.35 * drop * t + 1.35 * drop * t**2.0
            thick = (1.0 + 0.5 * k / n_ribs) * ppc * rng.uniform(0.9, 1.1)
            _bone_polyline(ribs, np.stack([px, py], 1), thick)
            # Anterior rib: from the lateral end, medially and downwards, thinner, ending where cartilage begins.
            # Only the upper six or so project over the lungs; lower ones end in cartilage under the heart.
            a = np.linspace(0.0, 1.0, 16) * (1.0 if k < 6 else 0.35)
            ax = px[-1] - side * a * span * rng.uniform(0.55, 0.7)
            ay = py[-1] + a * lung_h * rng.uniform(0.22, 0.3) - 0.05 * lung_h * np.sin(a * np.pi)
            _bone_polyline(ribs_front, np.stack([ax, ay], 1), thick * 0.85)
            y0 += spacing
    rib_density = rng.uniform(0.11, 0.17)
    # Ribs stand out against lung air and fade over soft tissue (scatter, film latitude).
    rib_contrast = 0.7 + 0.3 * _up(_blur(lung_c, 1.0 * ppc / COARSE), W, H)
    fine += rib_density * rib_contrast * (_blur(ribs, 0.18 * ppc) + 0.7 * _blur(ribs_front, 0.25 * ppc))

    # Clavicles: S-shaped, from the sternal notch out and up over the apices to the shoulders.
    clav = np.zeros((H, W), np.float32)
    clav_y = top + rng.uniform(-0.5, 1.5) * ppc
    for side in (-1, 1):
        c = np.linspace(0.0, 1.0, 20)
        length = rng.uniform(13.0, 16.0) * ppc
        cxs = cx + side * (1.5 * ppc + c * length)
        cys = clav_y + 0.8 * ppc - c * rng.uniform(2.0, 4.0) * ppc + 0.7 * ppc * np.sin(c * 2 * np.pi)
        _bone_polyline(clav, np.stack([cxs, cys], 1), rng.uniform(1.2, 1.6) * ppc, marrow=0.6)
        notes.setdefault("clavicles", []).append(np.stack([cxs, cys], 1))
    fine += rng.uniform(0.22, 0.32) * _blur(clav, 0.2 * ppc)

    # Scapular medial borders and humeral heads at the shoulders: dense bone edges near the lung apices.
    bones = np.zeros((H, W), np.float32)
    for side in (-1, 1):
        if rng.random() < 0.6:
            hx = cx + side * thorax_half * rng.uniform(1.0, 1.12)
            hy = shoulder_y + rng.uniform(1.0, 4.0) * ppc
            r = rng.uniform(2.4, 3.0) * ppc
            cv2.circle(bones, (int(hx * 4), int(hy * 4)), int(r * 4), 0.7, -1, cv2.LINE_8, 2)
            cv2.circle(bones, (int(hx * 4), int(hy * 4)), int(r * 4), 1.0, max(1, int(0.3 * ppc)), cv2.LINE_8, 2)
        if rng.random() < 0.6:
            s = np.linspace(0.0, 1.0, 12)
            scap_x = cx + side * (lung_w / 2 * rng.uniform(0.75, 0.95) - s * 2.0 * ppc)
            scap_y = top + 0.1 * lung_h + s * 0.45 * lung_h
            cv2.polylines(
                bones, [_pts(np.stack([scap_x, scap_y], 1))], False, 0.5, max(1, int(0.35 * ppc)), cv2.LINE_8, 2
            )
    fine += 0.25 * _blur(bones, 0.25 * ppc)

    # Pulmonary vessels: branching lines fanning out from each hilum, visible only against lung air.
    vessels = np.zeros((H, W), np.float32)
    for side in (-1, 1):
        hx = cx + side * rng.uniform(0.14, 0.2) * lung_w
        for _ in range(int(rng.integers(22, 34))):
            ang = np.deg2rad(rng.uniform(-80, 80)) if side > 0 else np.pi - np.deg2rad(rng.uniform(-80, 80))
            x0, y0_, w = hx, hilum_y + rng.normal(0, 0.05) * lung_h, 0.45 * ppc
            length = rng.uniform(0.15, 0.4) * lung_w
            for _seg in range(3):
                seg = length / 3
                ang += rng.normal(0, 0.25)
                x1_, y1_ = x0 + seg * np.cos(ang), y0_ + seg * np.sin(ang)
                cv2.line(
                    vessels,
                    (int(x0 * 4), int(y0_ * 4)),
                    (int(x1_ * 4), int(y1_ * 4)),
                    1.0,
                    max(1, round(w)),
                    cv2.LINE_8,
                    2,
                )
                x0, y0_, w = x1_, y1_, w * 0.7
    fine += rng.uniform(0.07, 0.11) * _blur(vessels, 0.2 * ppc) * lung

    # Gastric bubble under the left hemidiaphragm (image right).
    if rng.random() < 0.5:
        bub = np.zeros((H, W), np.float32)
        gx = cx + rng.uniform(0.15, 0.3) * lung_w
        gy = bottom + rng.uniform(1.0, 3.0) * ppc
        cv2.ellipse(
            bub,
            (int(gx * 4), int(gy * 4)),
            (int(rng.uniform(2, 3.5) * ppc * 4), int(rng.uniform(1.2, 2.2) * ppc * 4)),
            0,
            0,
            360,
            1.0,
            -1,
            cv2.LINE_8,
            2,
        )
        fine -= 0.18 * _blur(bub, 0.4 * ppc) * (1.0 - lung)

    density += fine * body
    return Chest(
        H, W, ppc, density, lung, body, (lung_box[0], lung_box[1], lung_box[2], lung_box[3]), cx, mask_name, notes
    )
