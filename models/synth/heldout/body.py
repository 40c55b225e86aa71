"""Held-out style, anatomy: a chest as analytic fields evaluated on the pixel grid.

Written independently of :mod:`models.synth.anatomy` and :mod:`models.synth.v2`: nothing is rasterised with
drawing calls. Each structure is a closed-form function of the pixel coordinates — superellipse trunk, polar
Fourier lung contours (no real lung masks), ribs and clavicles as bands around explicit curves y = f(x) with a
tubular cross-section, vertebrae as rounded-rectangle distance fields, soft tissue from smooth step functions —
and lung texture is 1/f noise made in the Fourier domain. Parameters come from their own families (normal and
gamma draws around textbook adult sizes rather than v1/v2's uniform ranges), so a model that learned v2's
drawing habits rather than anatomy and objects has nothing to lean on here.

Units: ``density`` is projected attenuation in the same spirit as v2 (soft tissue of the mediastinum ~1); the
image formation in :mod:`models.synth.heldout.scene` turns it into photon counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Rng = np.random.Generator


@dataclass
class Body:
    height: int
    width: int
    mm_per_px: float
    density: FloatArray
    lungs: npt.NDArray[np.bool_]
    trunk: FloatArray  # 0..1, inside the patient
    midline: float
    apex_y: float
    base_y: float
    neck_y: float
    findings: list[str]


def _smooth_step(x: FloatArray | float, width: float) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(np.asarray(x, np.float32) / max(width, 1e-6))), np.float32)


def _tube_profile(distance: FloatArray, half_width: float | FloatArray, cortex: float) -> FloatArray:
    """Cross-section of a tubular bone: chord length of a circle, with a denser cortical rim."""
    s = np.clip(np.abs(distance) / np.maximum(half_width, 1e-6), 0.0, 1.0)
    chord = np.sqrt(np.clip(1.0 - s * s, 0.0, 1.0))
    rim = np.exp(-(((s - 0.85) / 0.12) ** 2)) * (s < 1.0)
    return np.asarray(chord * (1.0 - cortex) + cortex * rim, np.float32)


def _fourier_noise(rng: Rng, h: int, w: int, slope: float) -> FloatArray:
    """Zero-mean, unit-variance noise with a 1/f^slope spectrum."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**slope
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(h, w))
    return np.asarray(field / max(float(field.std()), 1e-9), np.float32)


def _lung_mask(
    xx: FloatArray,
    yy: FloatArray,
    centre: tuple[float, float],
    radii: tuple[float, float],
    coefficients: list[tuple[float, float]],
    medial_x: float,
    side: int,
    base: FloatArray,
    apex_y: float,
) -> npt.NDArray[np.bool_]:
    """One lung: a polar Fourier contour around ``centre``, cut straight at the mediastinum and by the diaphragm."""
    dx = (xx - centre[0]) / radii[0]
    dy = (yy - centre[1]) / radii[1]
    theta = np.arctan2(dy, dx)
    rho = np.sqrt(dx * dx + dy * dy)
    contour = np.ones_like(theta)
    for k, (amp, phase) in enumerate(coefficients, start=2):
        contour += amp * np.cos(k * theta + phase)
    inside = rho <= contour
    inside &= (xx - medial_x) * side >= 0  # never across the mediastinum
    inside &= yy <= base
    inside &= yy >= apex_y
    return np.asarray(inside, np.bool_)


def make_body(rng: Rng, height: int, width: int) -> Body:
    H, W = height, width
    mm = float(np.clip(rng.normal(400.0, 25.0), 330.0, 460.0)) / H  # field of view 33–46 cm on the long side
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    midline = W / 2.0 + rng.normal(0.0, 0.025) * W
    cm = 10.0 / mm  # pixels per centimetre

    # Trunk: a superellipse from the shoulders down, a neck above; thickness grows towards the abdomen.
    half = float(np.clip(rng.normal(16.0, 1.2), 13.0, 19.5)) * cm
    neck_y = float(rng.normal(0.04, 0.03)) * H
    shoulder = neck_y + float(rng.gamma(4.0, 0.8)) * cm
    p = rng.uniform(3.0, 5.0)
    u = np.abs(xx - midline) / half
    trunk = _smooth_step((1.0 - u**p) * half, 0.6 * cm) * _smooth_step(yy - shoulder, 2.0 * cm)
    neck = _smooth_step(float(rng.normal(6.0, 0.5)) * cm - np.abs(xx - midline), 0.5 * cm)
    trunk = np.maximum(trunk, neck * _smooth_step(shoulder + 3 * cm - yy, 2.0 * cm))
    depth = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0)) ** 0.7
    density = (0.8 + 0.25 * _smooth_step(yy - 0.72 * H, 0.08 * H)) * depth * trunk

    # Lungs: two Fourier contours, the left (image right) one with the heart bite.
    apex_y = shoulder + float(rng.normal(1.0, 0.6)) * cm
    lung_h = float(np.clip(rng.normal(26.0, 2.0), 21.0, 31.0)) * cm
    lung_h = min(lung_h, 0.82 * H - apex_y)
    base_y = apex_y + lung_h
    dome = float(rng.gamma(6.0, 0.4)) * cm
    lungs = np.zeros((H, W), bool)
    gap = float(np.clip(rng.normal(2.6, 0.4), 1.8, 3.6)) * cm
    for side in (-1, 1):
        lx = midline + side * (gap + 0.42 * (half * 0.88 - gap))
        base = base_y - dome * np.exp(-(((xx - (lx - side * 0.1 * half)) / (0.35 * half)) ** 2)) + (side > 0) * 0.8 * cm
        coefficients = [(float(rng.normal(0.0, 0.05)), float(rng.uniform(0, 2 * np.pi))) for _ in range(4)]
        radii = (0.5 * (half * 0.9 - gap) * rng.uniform(1.05, 1.2), 0.55 * lung_h * rng.uniform(1.05, 1.15))
        centre = (lx, apex_y + 0.52 * lung_h)
        lungs |= _lung_mask(xx, yy, centre, radii, coefficients, midline + side * gap, side, base, apex_y)
    heart_x = midline + float(rng.normal(2.8, 0.7)) * cm
    heart_y = base_y - float(rng.normal(6.0, 1.0)) * cm
    heart_rx = float(np.clip(rng.normal(7.0, 0.9), 5.0, 10.0)) * cm
    heart_ry = heart_rx * rng.uniform(0.65, 0.85)
    heart = ((xx - heart_x) / heart_rx) ** 2 + ((yy - heart_y) / heart_ry) ** 2 <= 1.0
    lungs &= ~heart
    lungs &= trunk > 0.5

    lung_f = lungs.astype(np.float32)
    air = _box_blur(lung_f, int(1.2 * cm)) * rng.uniform(0.8, 0.92)
    density = density - air * depth
    density += 0.22 * _box_blur(heart.astype(np.float32), int(0.6 * cm)) * (1.0 - 0.5 * lung_f)
    density += 0.12 * _smooth_step(1.5 * cm - np.abs(xx - midline), 0.5 * cm) * trunk  # mediastinum
    texture = _fourier_noise(rng, H, W, rng.uniform(0.9, 1.3))
    density += 0.02 * texture * lung_f

    findings: list[str] = []
    bones = np.zeros((H, W), np.float32)
    _spine(bones, rng, xx, yy, midline, cm, H)
    _ribs(bones, rng, xx, yy, midline, apex_y, lung_h, half, cm)
    _clavicles(bones, rng, xx, yy, midline, apex_y, cm)
    density += bones * trunk
    calcium = _calcifications(rng, xx, yy, lungs, cm, findings)
    density += calcium
    return Body(
        H,
        W,
        mm,
        density.astype(np.float32),
        lungs,
        trunk.astype(np.float32),
        float(midline),
        float(apex_y),
        float(base_y),
        float(shoulder),
        findings,
    )


def _box_blur(img: FloatArray, radius: int) -> FloatArray:
    """A running mean of width 2·radius + 1, applied twice (close to a Gaussian), edges replicated."""
    k = 2 * max(1, radius) + 1
    out = img.astype(np.float32)
    for _ in range(2):
        out = np.asarray(cv2.blur(out, (k, k), borderType=cv2.BORDER_REPLICATE), np.float32)
    return out


def _spine(bones: FloatArray, rng: Rng, xx: FloatArray, yy: FloatArray, midline: float, cm: float, H: int) -> None:
    half_w = float(np.clip(rng.normal(2.2, 0.2), 1.8, 2.7)) * cm
    y = -float(rng.uniform(0.0, 2.5)) * cm
    value = rng.uniform(0.04, 0.07)
    while y < H:
        vh = (1.9 + 0.9 * max(0.0, y / H)) * cm
        y0, y1 = int(max(0, y)), int(min(H, y + vh + 1))
        if y1 > y0:
            sx = np.abs(xx[y0:y1] - midline) - half_w + 0.3 * cm
            sy = np.abs(yy[y0:y1] - (y + vh / 2)) - vh / 2 + 0.3 * cm
            sdf = np.hypot(np.maximum(sx, 0), np.maximum(sy, 0)) + np.minimum(np.maximum(sx, sy), 0) - 0.3 * cm
            body = np.clip(0.5 - sdf / (0.15 * cm), 0.0, 1.0)
            plate = np.exp(-((sdf / (0.12 * cm)) ** 2))
            ped = sum(
                np.exp(
                    -(
                        (
                            (
                                np.hypot(
                                    (xx[y0:y1] - midline - s * 0.6 * half_w) / 0.35, (yy[y0:y1] - y - 0.3 * vh) / 0.5
                                )
                                / cm
                                - 1.0
                            )
                            / 0.18
                        )
                        ** 2
                    )
                )
                for s in (-1, 1)
            )
            bones[y0:y1] += value * (0.7 * body + 0.6 * plate + 0.8 * ped)
        y += vh * rng.uniform(1.18, 1.28)


def _ribs(
    bones: FloatArray,
    rng: Rng,
    xx: FloatArray,
    yy: FloatArray,
    midline: float,
    apex_y: float,
    lung_h: float,
    half: float,
    cm: float,
) -> None:
    value = float(np.clip(rng.normal(0.13, 0.02), 0.08, 0.2))
    for side in (-1, 1):
        y_start = apex_y - float(rng.gamma(3.0, 0.3)) * cm
        for k in range(11):
            # Posterior rib: y = y0 + a·s − b·s² + c·s³ for s = lateral distance from the spine, a gentle S.
            span = half * (0.7 + 0.3 * min(1.0, k / 3))
            s0, s1 = 1.8 * cm, 1.8 * cm + span
            y0 = y_start + k * lung_h / 10.2 * (1.0 + 0.03 * k)
            sag = float(rng.normal(0.16, 0.02)) * lung_h * (0.7 + 0.05 * k)
            x_lo, x_hi = sorted((midline + side * s0, midline + side * s1))
            c0, c1 = int(max(0, x_lo)), int(min(bones.shape[1], x_hi + 1))
            if c1 <= c0:
                continue
            s = np.clip((np.abs(xx[0, c0:c1] - midline) - s0) / span, 0.0, 1.0)
            curve = y0 - 0.25 * sag * s + 1.25 * sag * s**2.2
            thick = (0.55 + 0.03 * k) * cm
            r0, r1 = int(max(0, curve.min() - thick)), int(min(bones.shape[0], curve.max() + thick + 1))
            if r1 <= r0:
                continue
            dist = yy[r0:r1, c0:c1] - curve[None, :]
            bones[r0:r1, c0:c1] += value * _tube_profile(dist, thick, 0.5)
            if k < 7:  # anterior rib, fainter, from the lateral end down towards the sternum
                a_lo, a_hi = sorted((midline + side * 0.35 * span, midline + side * s1))
                d0, d1 = int(max(0, a_lo)), int(min(bones.shape[1], a_hi + 1))
                if d1 <= d0:
                    continue
                t = (
                    (a_hi - xx[0, d0:d1]) / max(a_hi - a_lo, 1.0)
                    if side > 0
                    else (xx[0, d0:d1] - a_lo) / max(a_hi - a_lo, 1.0)
                )
                y_end = float(curve[-1]) if len(curve) else y0
                front = y_end + t * 0.2 * lung_h + 0.03 * lung_h * np.sin(np.pi * t)
                q0, q1 = int(max(0, front.min() - thick)), int(min(bones.shape[0], front.max() + thick + 1))
                if q1 > q0:
                    dist = yy[q0:q1, d0:d1] - front[None, :]
                    bones[q0:q1, d0:d1] += 0.55 * value * _tube_profile(dist, 0.8 * thick, 0.3)


def _clavicles(
    bones: FloatArray, rng: Rng, xx: FloatArray, yy: FloatArray, midline: float, apex_y: float, cm: float
) -> None:
    value = float(np.clip(rng.normal(0.24, 0.03), 0.16, 0.32))
    level = apex_y + float(rng.normal(0.8, 0.6)) * cm
    for side in (-1, 1):
        length = float(np.clip(rng.normal(14.5, 1.0), 12.0, 17.0)) * cm
        x_lo, x_hi = sorted((midline + side * 1.2 * cm, midline + side * (1.2 * cm + length)))
        c0, c1 = int(max(0, x_lo)), int(min(bones.shape[1], x_hi + 1))
        if c1 <= c0:
            continue
        s = np.clip((np.abs(xx[0, c0:c1] - midline) - 1.2 * cm) / length, 0.0, 1.0)
        curve = level + 0.6 * cm - 2.8 * cm * s + 0.6 * cm * np.sin(2 * np.pi * s)
        thick = float(rng.normal(0.75, 0.06)) * cm * (1.0 + 0.35 * np.exp(-s / 0.08))  # the medial head is broad
        r0, r1 = int(max(0, curve.min() - 1.5 * cm)), int(min(bones.shape[0], curve.max() + 1.5 * cm + 1))
        if r1 > r0:
            dist = yy[r0:r1, c0:c1] - curve[None, :]
            bones[r0:r1, c0:c1] += value * _tube_profile(dist, thick[None, :], 0.45)


def _calcifications(
    rng: Rng, xx: FloatArray, yy: FloatArray, lungs: npt.NDArray[np.bool_], cm: float, findings: list[str]
) -> FloatArray:
    """Calcified granulomas in the lungs and costal-cartilage calcification: dense, small, unannotated."""
    out = np.zeros(lungs.shape, np.float32)
    pts = np.argwhere(lungs[::3, ::3]) * 3
    count = int(rng.poisson(1.6)) if rng.random() < 0.55 else 0
    if count and len(pts):
        findings.append("calcified_granulomas")
        for _ in range(count):
            y, x = pts[rng.integers(len(pts))]
            r = float(rng.gamma(3.0, 0.07)) * cm + 0.5
            y0, y1, x0, x1 = int(max(0, y - r - 3)), int(y + r + 4), int(max(0, x - r - 3)), int(x + r + 4)
            d = np.hypot(xx[y0:y1, x0:x1] - x, yy[y0:y1, x0:x1] - y)
            out[y0:y1, x0:x1] += float(rng.uniform(0.2, 0.8)) * np.clip(r + 0.5 - d, 0.0, 1.0)
    if rng.random() < 0.3:
        findings.append("costal_cartilage_calcification")
        ys, xs = np.nonzero(lungs[::3, ::3])
        if len(xs):
            for _ in range(int(rng.integers(3, 9))):
                k = rng.integers(len(xs))
                y, x = ys[k] * 3, xs[k] * 3
                a, b, ang = float(rng.gamma(4.0, 0.1)) * cm, float(rng.gamma(4.0, 0.04)) * cm, rng.uniform(0, math.pi)
                y0, y1, x0, x1 = int(max(0, y - a - 2)), int(y + a + 3), int(max(0, x - a - 2)), int(x + a + 3)
                dx, dy = xx[y0:y1, x0:x1] - x, yy[y0:y1, x0:x1] - y
                u = (dx * math.cos(ang) + dy * math.sin(ang)) / a
                v = (-dx * math.sin(ang) + dy * math.cos(ang)) / b
                out[y0:y1, x0:x1] += float(rng.uniform(0.1, 0.35)) * (u * u + v * v <= 1.0)
    return out
