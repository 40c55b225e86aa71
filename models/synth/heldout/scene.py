"""Held-out style, image formation and composition: photon counts, log, processing, the annotation rule.

Image formation differs from v2 on purpose: the detector counts photons, ``N = N0 · heel(y) · exp(−μ·density)``
with a per-image dose ``N0`` and an anode heel gradient, plus scatter (a heavily blurred fraction of the primary);
noise is drawn in the count domain (Gaussian approximation of Poisson, σ = √N, slightly correlated between
neighbouring pixels), so it grows where few photons arrive (behind dense tissue and metal), the opposite trend to
v2's display-domain grain. The log of the counts is then processed as a CR/DR workstation would: multi-scale
contrast enhancement (adding back a high-pass of the log image), a window from the image's own histogram and a
sigmoid look-up table. Burned-in text uses other fonts and places, sometimes on a dark label box.

The annotation rule is Object-CXR's, as in v2 (it is the data set's rule, not a style): a foreign object is
annotated iff at least 60 % of its density lies over the lung fields; label-blind foreign objects outside them
(chains with pendants, hair clips above the shoulders, belt buckles and keys under the diaphragm, snaps on the
shoulders) are kept only if at most 10 % does; support devices (ECG electrodes at the standard limb-lead sites and
the precordial V1–V6 sites, with their wires) are never annotated, wherever they lie.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from models.datasets import Annotation
from models.synth.heldout import items as it
from models.synth.heldout.body import Body, make_body
from models.synth.render import Rendered, RenderedObject

FloatArray = npt.NDArray[np.float32]
Rng = np.random.Generator

ANNOTATED_MIN_SHARE = 0.6
UNANNOTATED_MAX_SHARE = 0.1
LABELS = ("PORT", "SUPINE", "UPRIGHT", "CXR", "FRONTAL", "RM 12", "MOBILE", "ED", "STAT", "DX", "CR")


def _share(item: it.Item, lungs: npt.NDArray[np.bool_]) -> float:
    h, w = item.density.shape
    H, W = lungs.shape
    y0, y1, x0, x1 = max(item.top, 0), min(item.top + h, H), max(item.left, 0), min(item.left + w, W)
    total = float(item.density.sum())
    if total <= 0 or y1 <= y0 or x1 <= x0:
        return 0.0
    part = item.density[y0 - item.top : y1 - item.top, x0 - item.left : x1 - item.left]
    return float((part * lungs[y0:y1, x0:x1]).sum()) / total


def _within(item: it.Item, H: int, W: int) -> bool:
    x1, y1, x2, y2 = item.annotation.box
    h, w = item.density.shape
    return (
        x1 >= 0
        and y1 >= 0
        and x2 <= W - 1
        and y2 <= H - 1
        and item.left >= 0
        and item.top >= 0
        and item.left + w <= W
        and item.top + h <= H
    )


def _stamp(canvas: FloatArray, item: it.Item) -> None:
    h, w = item.density.shape
    H, W = canvas.shape
    y0, y1, x0, x1 = max(item.top, 0), min(item.top + h, H), max(item.left, 0), min(item.left + w, W)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] += item.density[y0 - item.top : y1 - item.top, x0 - item.left : x1 - item.left]


def _lung_points(lungs: npt.NDArray[np.bool_], step: int = 3) -> npt.NDArray[np.int64]:
    return np.argwhere(lungs[::step, ::step]) * step


def _objects_over_lungs(rng: Rng, body: Body, cm: float) -> list[it.Item]:
    """Annotated objects: a Poisson number (at least one) of this style's kinds, each ≥ 60 % over the lungs."""
    wanted = 1 + int(min(rng.poisson(0.7), 5))
    kinds = list(it.LUNG_KINDS)
    weights = np.array([it.LUNG_KINDS[k][0] for k in kinds])
    weights = weights / weights.sum()
    pts = _lung_points(body.lungs)
    placed: list[it.Item] = []
    tries = 0
    while len(placed) < wanted and tries < 12 * wanted and len(pts):
        tries += 1
        y, x = pts[rng.integers(len(pts))]
        kind = kinds[int(rng.choice(len(kinds), p=weights))]
        item = it.LUNG_KINDS[kind][1](rng, (float(x), float(y)), cm)
        if item is None or not _within(item, body.height, body.width):
            continue
        if _share(item, body.lungs) < ANNOTATED_MIN_SHARE:
            continue
        box = item.annotation.box
        if any(
            not (
                box[2] < o.annotation.box[0]
                or o.annotation.box[2] < box[0]
                or box[3] < o.annotation.box[1]
                or o.annotation.box[3] < box[1]
            )
            for o in placed
        ):
            continue
        placed.append(item)
    return placed


def _objects_elsewhere(rng: Rng, body: Body, cm: float) -> list[it.Item]:
    """Label-blind objects outside the lung fields (kept only if ≤ 10 % of their density is over the lungs)."""
    out: list[it.Item] = []

    def keep(item: it.Item | None) -> bool:
        if item is None:
            return False
        if item.kind in it.SUPPORT_DEVICES or _share(item, body.lungs) <= UNANNOTATED_MAX_SHARE:
            out.append(item)
            return True
        return False

    mid, apex, base, neck = body.midline, body.apex_y, body.base_y, body.neck_y
    if rng.random() < 0.5:  # limb-lead electrodes: both shoulders, both flanks under the ribs
        sites = [(-1, neck + 1.5 * cm), (1, neck + 1.5 * cm), (-1, base + 3 * cm), (1, base + 3 * cm)]
        for side, y in sites:
            if rng.random() < 0.85:
                c = (mid + side * float(rng.normal(11.0, 1.5)) * cm, y + float(rng.normal(0.0, 1.0)) * cm)
                if keep(it.electrode_pad(rng, c, cm)) and rng.random() < 0.9:
                    heading = math.atan2(-1.0 if y < apex + 5 * cm else 1.0, side * 1.0) + float(rng.normal(0, 0.3))
                    curve = it.wander(rng, c, float(rng.gamma(6.0, 2.5)) * cm, heading, 0.2, 6)
                    keep(it.wire(rng, c, cm, curve, "lead_wire"))
        if rng.random() < 0.4:  # precordial leads V1–V6: across the left chest, over the heart and the left lung
            y4 = base - float(rng.normal(7.0, 1.0)) * cm
            precordial = [(-1.5, 0.0), (1.5, 0.0), (4.0, 1.0), (7.0, 1.5), (10.0, 1.5), (12.5, 1.5)]
            for dx, dy in precordial:
                c = (mid + dx * cm + float(rng.normal(0, 0.5)) * cm, y4 + dy * cm + float(rng.normal(0, 0.5)) * cm)
                if keep(it.electrode_pad(rng, c, cm)) and rng.random() < 0.85:
                    heading = -math.pi / 2 + float(rng.normal(0, 0.5))
                    keep(
                        it.wire(
                            rng, c, cm, it.wander(rng, c, float(rng.gamma(6.0, 2.5)) * cm, heading, 0.2, 6), "lead_wire"
                        )
                    )
    if rng.random() < 0.18:  # chain with a pendant, around the neck
        t = np.linspace(-1.0, 1.0, 9)
        depth = float(rng.gamma(4.0, 1.2)) * cm
        control = np.stack([mid + float(rng.normal(5.0, 0.8)) * cm * t, neck - 2 * cm + depth * (1 - t**2)], 1)
        keep(it.bead_string(rng, (mid, neck), cm, it.catmull_rom(control, 6), "chain"))
        keep(it.coin(rng, (mid + float(rng.normal(0, 0.5)) * cm, neck - 1.2 * cm + depth), 0.6 * cm))
    if rng.random() < 0.2:  # snaps on the shoulders
        for _ in range(int(rng.integers(1, 5))):
            c = (
                mid + float(rng.choice([-1, 1])) * rng.uniform(4.0, 13.0) * cm,
                neck + float(rng.normal(0.0, 1.2)) * cm,
            )
            keep(it.press_stud(rng, c, cm))
    if rng.random() < 0.1:  # a hair clip above the shoulders
        keep(it.hair_clip(rng, (mid + float(rng.normal(0, 3.0)) * cm, max(neck - 3 * cm, 2 * cm)), cm))
    if rng.random() < 0.15:  # belt buckle, keys or coins under the diaphragm
        for _ in range(int(rng.integers(1, 3))):
            c = (mid + float(rng.normal(0, 6.0)) * cm, base + float(rng.gamma(3.0, 1.5)) * cm + 2 * cm)
            keep([it.buckle, it.key, it.coin][int(rng.integers(3))](rng, c, cm))
    return out


def _label_text(
    rng: Rng, H: int, W: int, keep_clear: list[tuple[float, float, float, float]]
) -> tuple[FloatArray, list[str]]:
    """Burned-in labels: other fonts than v2, sometimes on a dark box; never over an annotated object."""
    layer = np.zeros((H, W), np.float32)
    names: list[str] = []
    if rng.random() < 0.55:
        names.append("burned_in_text")
        font = [cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL][int(rng.integers(3))]
        for _ in range(int(rng.integers(1, 4))):
            text = f"{rng.choice(LABELS)} {int(rng.integers(100000, 999999))}"
            scale = H / 700 * float(rng.uniform(0.7, 1.3))
            (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
            x = int(rng.uniform(0.02, max(0.03, 1.0 - (tw + 8) / W)) * W)
            y = int(rng.choice([rng.uniform(0.03, 0.1), rng.uniform(0.9, 0.97)]) * H) + th // 2
            box = (x - 4, y - th - 4, x + tw + 4, y + 6)
            if any(not (box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1]) for b in keep_clear):
                continue
            stamp = np.zeros((H, W), np.uint8)
            cv2.putText(stamp, text, (x, y), font, scale, 255, max(1, round(H / 700)), cv2.LINE_8)
            if rng.random() < 0.35:
                cv2.rectangle(layer, (box[0], box[1]), (box[2], box[3]), -1.0, -1)  # dark label box
            layer = np.where(stamp > 0, float(rng.uniform(0.8, 1.0)), layer).astype(np.float32)
    return layer, names


def render_heldout(
    sequence: np.random.SeedSequence, size: int, *, with_objects: bool = True, label: int | None = None
) -> Rendered:
    """One held-out-style radiograph (see the module docstring). ``with_objects=False`` leaves the annotated
    objects out of the density; everything else (noise draws included) stays the same."""
    body_seq, objects_seq, other_seq, noise_seq = sequence.spawn(4)
    rng = np.random.default_rng(body_seq)
    H = size
    W = max(16, min(size, round(size * float(np.clip(rng.normal(0.9, 0.06), 0.75, 1.0)))))
    positive = bool(rng.random() < 0.5) if label is None else bool(label)
    body = make_body(rng, H, W)
    cm = 10.0 / body.mm_per_px
    elsewhere = _objects_elsewhere(np.random.default_rng(other_seq), body, cm)
    annotated = _objects_over_lungs(np.random.default_rng(objects_seq), body, cm) if positive else []
    positive = bool(annotated)

    base = body.density.copy()
    for item in elsewhere:
        _stamp(base, item)
    full = base.copy()
    for item in annotated:
        _stamp(full, item)
    density = full if with_objects else base

    # Detector: photon counts with heel effect and scatter, Gaussian-approximated Poisson noise in counts.
    mu = float(rng.uniform(1.6, 2.4))
    dose = float(np.exp(rng.uniform(math.log(300.0), math.log(6000.0))))
    heel = 1.0 + float(rng.normal(0.0, 0.08)) * (np.linspace(-1.0, 1.0, H, dtype=np.float32)[:, None])
    primary = dose * heel * np.exp(-mu * density)
    scatter = float(rng.uniform(0.05, 0.35)) * cv2.blur(primary, (max(3, W // 8) | 1, max(3, H // 8) | 1))
    counts = primary + scatter
    nrng = np.random.default_rng(noise_seq)
    z = nrng.standard_normal((H, W)).astype(np.float32)
    if rng.random() < 0.6:  # detector crosstalk: neighbouring pixels share some noise
        z = np.asarray(cv2.GaussianBlur(z, (0, 0), float(rng.uniform(0.3, 0.8))), np.float32)
    z /= max(float(z.std()), 1e-6)
    counts = np.maximum(counts + np.sqrt(counts) * z, 0.5)
    log_image = -np.log(counts / dose)  # bright = dense, as displayed

    # Processing: multi-scale contrast enhancement, then a histogram window and a sigmoid LUT. The window comes
    # from the image with every object, so leaving the annotated ones out changes only around their pixels.
    sigma = float(rng.uniform(0.01, 0.04)) * H
    enhanced = log_image + float(rng.uniform(0.0, 0.8)) * (log_image - cv2.GaussianBlur(log_image, (0, 0), sigma))
    ref = -np.log(np.maximum(dose * heel * np.exp(-mu * full) + scatter, 0.5) / dose)
    lo, hi = np.percentile(ref[::4, ::4], [float(rng.uniform(0.5, 3.0)), float(rng.uniform(99.0, 99.9))])
    centre, width = (lo + hi) / 2.0, max(hi - lo, 1e-3)
    slope = float(rng.uniform(3.5, 6.0))
    unit = 1.0 / (1.0 + np.exp(-slope * (enhanced - centre) / width))
    low_end, high_end = 1.0 / (1.0 + math.exp(slope / 2)), 1.0 / (1.0 + math.exp(-slope / 2))
    unit = np.clip((unit - low_end) / (high_end - low_end), 0.0, 1.0)

    boxes = [o.annotation.box for o in annotated]
    text, names = _label_text(np.random.default_rng(other_seq.spawn(1)[0]), H, W, boxes)
    unit = np.where(text < 0, 0.05, np.where(text > 0, np.maximum(unit, text), unit))
    image = unit.astype(np.float32)

    objects = tuple(RenderedObject(o.kind, o.density, o.left, o.top, o.annotation) for o in annotated) + tuple(
        RenderedObject(o.kind, o.density, o.left, o.top, None, o.kind in it.SUPPORT_DEVICES) for o in elsewhere
    )
    annotations: tuple[Annotation, ...] = tuple(o.annotation for o in annotated)
    return Rendered(
        image,
        int(positive),
        annotations,
        tuple(o.kind for o in annotated),
        tuple(body.findings + names),
        "heldout-fourier",
        style="heldout",
        objects=objects,
        lung_field=body.lungs,
        settings={"dose": dose, "mu": mu, "png16": bool(rng.random() < 0.5)},
    )
