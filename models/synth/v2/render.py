"""Generator v2: one synthetic radiograph under Object-CXR's annotation rule, randomised across acquisition.

**Annotation rule** (Object-CXR: only foreign objects projecting over the lung fields are annotated, and only
they make an image positive; support devices are never annotated). Every object is drawn alone first, so its exact
pixels are known; its *lung share* is the part of its density that lies over the lung-field mask. A foreign object
is annotated iff its lung share is at least :data:`ANNOTATED_MIN_LUNG_SHARE`; foreign objects meant to stay
unannotated are only kept when their share is at most :data:`UNANNOTATED_MAX_LUNG_SHARE`. The gap between the two
keeps the rule unambiguous. Unannotated objects of the same kinds outside the lungs — necklaces with pendants,
earrings, gown snaps, shirt buttons down the midline, bra hooks over the spine, hair pins, pocket contents under the
diaphragm — and support devices anywhere (ECG electrodes with leads and clips, feeding and oxygen tubes), plus lead
side markers and burned-in text, occur in positives and negatives at the same rates (they are drawn from a random
stream that does not know the label). Positives carry 1–6 annotated objects (60 % of them one).

**Randomised per image** (so a model must learn the object, not the generator): PA or portable AP projection,
field of view (a 1.0–1.22× zoom on a 36–43 cm chest), rotation (σ 3°, at most 8°), position of the chest in the
frame, collimation (black electronic shutters or bright unexposed borders), blur (σ 0.2–1.2 px per 512 px, on
anatomy and objects alike), exposure window (either the anatomy's range with metal rolling off a soft shoulder,
or the full range of the image so metal keeps its structure), tone curve (gamma or sigmoid), quantum noise,
detector gain pattern, anti-scatter grid lines, row banding, bit depth (8–14 bits) and burned-in text.

**Counterfactual**: the window comes from the image *with* every object, the noise from its own random stream and
the text positions are fixed before the objects are drawn, so ``with_objects=False`` gives the same radiograph
minus exactly the annotated objects' pixels (unannotated objects stay): the tests use it to check the boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from models.synth.anatomy import Chest, build_chest
from models.synth.lungs import LungMaskBank, default_bank
from models.synth.objects import _smooth_path
from models.synth.v2 import objects as ob
from models.synth.v2.anatomy import bright_anatomy

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
Rng = np.random.Generator

POSITIVE_RATE = 0.5
ANNOTATED_MIN_LUNG_SHARE = 0.6
UNANNOTATED_MAX_LUNG_SHARE = 0.1
STYLE_CODE = 2  # mixed into every image's seed: v2 images never share a random stream with v1's
TEXT_SNIPPETS = ("PORTABLE", "AP", "PA", "ERECT", "SUPINE", "CHEST", "L", "R", "WARD 4", "ICU", "XR", "SEMI-ERECT")


@dataclass
class Scene:
    """Everything drawn on one v2 image before display."""

    height: int
    width: int
    ppc: float
    density: FloatArray  # anatomy
    lung_field: BoolArray
    body: FloatArray
    exposed: BoolArray
    landmarks: dict[str, tuple[float, float]]
    projection: str
    lookalikes: list[str]
    mask_name: str
    annotated: list[ob.Placed] = field(default_factory=list)
    unannotated: list[ob.Placed] = field(default_factory=list)


def lung_share(placed: ob.Placed, lung_field: BoolArray) -> float:
    """Share of an object's density that lies over the lung fields (0 where it lies outside the image)."""
    h, w = placed.shape_hw
    H, W = lung_field.shape
    ya, yb = max(placed.y0, 0), min(placed.y0 + h, H)
    xa, xb = max(placed.x0, 0), min(placed.x0 + w, W)
    total = float(placed.density.sum())
    if total <= 0 or ya >= yb or xa >= xb:
        return 0.0
    part = placed.density[ya - placed.y0 : yb - placed.y0, xa - placed.x0 : xb - placed.x0]
    return float((part * lung_field[ya:yb, xa:xb]).sum()) / total


def add_patch(canvas: FloatArray, placed: ob.Placed) -> None:
    """Add an object's density into ``canvas``, clipped to the image."""
    h, w = placed.shape_hw
    H, W = canvas.shape
    ya, yb = max(placed.y0, 0), min(placed.y0 + h, H)
    xa, xb = max(placed.x0, 0), min(placed.x0 + w, W)
    if ya < yb and xa < xb:
        canvas[ya:yb, xa:xb] += placed.density[ya - placed.y0 : yb - placed.y0, xa - placed.x0 : xb - placed.x0]


def _inside_image(placed: ob.Placed, exposed: BoolArray) -> bool:
    x1, y1, x2, y2 = placed.support_box
    H, W = exposed.shape
    if x1 < 0 or y1 < 0 or x2 > W - 1 or y2 > H - 1:
        return False
    box = placed.annotation.box
    if box[0] < 0 or box[1] < 0 or box[2] > W - 1 or box[3] > H - 1:
        return False
    return bool(exposed[y1 : y2 + 1, x1 : x2 + 1].all())


def _overlaps(box: tuple[int, int, int, int], others: list[ob.Placed], margin: int = 2) -> bool:
    x1, y1, x2, y2 = box
    for o in others:
        a1, b1, a2, b2 = o.support_box
        if x1 <= a2 + margin and a1 <= x2 + margin and y1 <= b2 + margin and b1 <= y2 + margin:
            return True
    return False


# --- geometry: chest on a larger canvas, rotated, cropped to the frame -----------------------------------------


def _frame(rng: Rng, chest: Chest, H: int, W: int, angle: float) -> npt.NDArray[np.float64]:
    """Affine (2×3) from chest-canvas to image pixels: rotation about the canvas centre, then a crop offset chosen
    so the lung fields stay inside the frame where the zoom allows."""
    Hc, Wc = chest.height, chest.width
    rot = cv2.getRotationMatrix2D((Wc / 2.0, Hc / 2.0), angle, 1.0)
    x1, y1, x2, y2 = chest.lung_box
    corners = np.array([[x1, y1, 1.0], [x2, y1, 1.0], [x1, y2, 1.0], [x2, y2, 1.0]]) @ rot.T
    bx1, by1 = corners.min(0)
    bx2, by2 = corners.max(0)
    margin = 0.02 * H
    lo_x, hi_x = max(0.0, bx2 + margin - W), min(float(Wc - W), bx1 - margin)
    lo_y, hi_y = max(0.0, by2 + 2.5 * chest.px_per_cm - H), min(float(Hc - H), by1 - margin)
    ox = rng.uniform(lo_x, hi_x) if lo_x <= hi_x else (Wc - W) / 2.0
    oy = rng.uniform(lo_y, hi_y) if lo_y <= hi_y else (Hc - H) / 2.0
    affine = np.asarray(rot, np.float64).copy()
    affine[0, 2] -= round(ox)
    affine[1, 2] -= round(oy)
    return affine


def _warp(img: FloatArray, affine: npt.NDArray[np.float64], H: int, W: int, border: int) -> FloatArray:
    return np.asarray(cv2.warpAffine(img, affine, (W, H), flags=cv2.INTER_LINEAR, borderMode=border), np.float32)


def _map_point(affine: npt.NDArray[np.float64], x: float, y: float) -> tuple[float, float]:
    p = affine @ np.array([x, y, 1.0])
    return float(p[0]), float(p[1])


def _collimation(rng: Rng, H: int, W: int, lung_field: BoolArray, ppc: float) -> BoolArray:
    """Exposed field: shutters on some sides, straight or slightly tilted, never closer than 1 cm to the lungs."""
    exposed = np.ones((H, W), bool)
    if rng.random() < 0.5:
        return exposed
    ys, xs = np.nonzero(lung_field[::4, ::4])
    if len(xs) == 0:
        return exposed
    lx1, lx2, ly1, ly2 = xs.min() * 4, xs.max() * 4 + 3, ys.min() * 4, ys.max() * 4 + 3
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    limits = {"left": lx1 - ppc, "right": W - 1 - (lx2 + ppc), "top": ly1 - ppc, "bottom": H - 1 - (ly2 + ppc)}
    for side, room in limits.items():
        length = W if side in ("left", "right") else H
        if rng.random() < 0.4 or room < 0.025 * length:
            continue
        depth = rng.uniform(0.02 * length, min(0.09 * length, room - 0.005 * length))
        tilt = math.tan(math.radians(rng.uniform(-2.0, 2.0)))
        if side == "left":
            exposed &= xx >= depth + tilt * (yy - H / 2)
        elif side == "right":
            exposed &= xx <= W - 1 - depth + tilt * (yy - H / 2)
        elif side == "top":
            exposed &= yy >= depth + tilt * (xx - W / 2)
        else:
            exposed &= yy <= H - 1 - depth + tilt * (xx - W / 2)
    return exposed


def build_scene(rng: Rng, H: int, W: int, bank: LungMaskBank) -> Scene:
    projection = "AP" if rng.random() < 0.35 else "PA"
    zoom = rng.uniform(1.0, 1.22)
    Hc, Wc = math.ceil(H * zoom), math.ceil(W * zoom)
    mask, mask_name = bank.draw(rng)
    chest = build_chest(Hc, Wc, rng, mask, mask_name)
    extra, names = bright_anatomy(chest, rng, projection)
    if chest.notes.get("breast_shadows"):
        names.insert(0, "breast_shadows")
    angle = float(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0))
    affine = _frame(rng, chest, H, W, angle)
    density = _warp(chest.density + extra, affine, H, W, cv2.BORDER_REFLECT_101)
    lung = _warp(chest.lung, affine, H, W, cv2.BORDER_CONSTANT)
    body = _warp(chest.body, affine, H, W, cv2.BORDER_REFLECT_101)
    ppc = chest.px_per_cm
    lung_field = lung >= 0.5
    exposed = _collimation(rng, H, W, lung_field, ppc)
    lung_field &= exposed
    notes = chest.notes
    landmarks = {  # where the label-blind layer puts necklaces, snaps, tubes and pocket contents
        "centre_top": _map_point(affine, chest.centre_x, notes["shoulder_y"]),
        "diaphragm": _map_point(affine, chest.centre_x, notes["diaphragm_y"]),
    }
    return Scene(H, W, ppc, density, lung_field, body, exposed, landmarks, projection, names, mask_name)


# --- object placement ------------------------------------------------------------------------------------------


def _lung_distance(scene: Scene) -> FloatArray:
    """Pixel distance to the nearest lung-field pixel (0 inside), at a quarter of the resolution, upsampled."""
    small = cv2.resize(
        (~scene.lung_field).astype(np.uint8),
        (scene.width // 4 + 1, scene.height // 4 + 1),
        interpolation=cv2.INTER_NEAREST,
    )
    dist = cv2.distanceTransform(small, cv2.DIST_L2, 3) * 4.0
    return np.asarray(cv2.resize(dist, (scene.width, scene.height), interpolation=cv2.INTER_LINEAR), np.float32)


def _random_point(rng: Rng, region: BoolArray) -> tuple[float, float] | None:
    pts = np.argwhere(region[::4, ::4]) * 4
    if len(pts) == 0:
        return None
    y, x = pts[rng.integers(len(pts))] + rng.uniform(0, 4, 2)
    return float(x), float(y)


def _keep_unannotated(scene: Scene, drawn: ob.Drawn, rng: Rng, blur: float) -> bool:
    """Keep an object as unannotated: a support device anywhere, a foreign object only (almost) entirely outside
    the lung fields."""
    placed = ob.finish(drawn, ob.object_peak(rng, drawn.metal), blur, 0.0)
    if drawn.kind not in ob.SUPPORT_DEVICES and lung_share(placed, scene.lung_field) > UNANNOTATED_MAX_LUNG_SHARE:
        return False
    if lung_share(placed, np.ones_like(scene.lung_field)) < 0.3:  # mostly off the film: not worth keeping
        return False
    scene.unannotated.append(placed)
    return True


def _unannotated_objects(scene: Scene, rng: Rng, blur: float) -> None:
    """The label-blind layer: foreign objects outside the lung fields (the same kinds as the annotated ones) and
    support devices anywhere."""
    H, W, ppc = scene.height, scene.width, scene.ppc
    dist = _lung_distance(scene)
    body = (scene.body > 0.5) & scene.exposed
    cx, top_y = scene.landmarks["centre_top"]
    _, diaphragm_y = scene.landmarks["diaphragm"]

    def outside(radius_cm: float) -> BoolArray:
        region: BoolArray = body & (dist > radius_cm * ppc + 0.5 * ppc)
        return region

    if rng.random() < (0.7 if scene.projection == "AP" else 0.4):  # ECG monitoring: electrodes and leads
        region = body & (dist > 0.5 * ppc) if rng.random() < 0.5 else body  # limb leads only, or chest leads too
        for _ in range(int(rng.integers(2, 7))):
            c = _random_point(rng, region)
            if c is None:
                break
            if not _keep_unannotated(scene, ob.electrode(rng, c, ppc), rng, blur):
                continue
            if rng.random() < 0.85:  # leads run from the electrode off towards the film's edge
                away = math.atan2(c[1] - H * 0.45, c[0] - cx) + rng.normal(0, 0.4)
                path = _smooth_path(rng, c, rng.uniform(6.0, 22.0) * ppc, away, rng.uniform(0.03, 0.1), 50)
                _keep_unannotated(scene, ob.wire_on(path, ppc, rng, "ecg_lead", connector=True), rng, blur)
    if rng.random() < 0.2:  # necklace around the neck, pendant on the manubrium
        half, depth = rng.uniform(3.5, 7.0) * ppc, rng.uniform(3.0, 10.0) * ppc
        for _ in range(3):
            t = np.linspace(-1.0, 1.0, 60)
            y0 = top_y - rng.uniform(2.0, 6.0) * ppc
            path = np.stack(
                [cx + half * t, y0 + depth * (1 - np.cosh(1.3 * t) / np.cosh(1.3)) / (1 - 1 / np.cosh(1.3))], 1
            )
            necklace = ob.chain_on(path, ppc, rng, "necklace")
            if _keep_unannotated(scene, necklace, rng, blur):
                if rng.random() < 0.5:
                    low = path[int(np.argmax(path[:, 1]))]
                    pendant = ob.coin(rng, (float(low[0]), float(low[1] + 0.8 * ppc)), ppc, "pendant", 0.6)
                    _keep_unannotated(scene, pendant, rng, blur)
                break
            depth *= 0.6
    if rng.random() < 0.25:  # gown snaps along the shoulders
        for _ in range(int(rng.integers(2, 7))):
            c = (cx + rng.choice([-1, 1]) * rng.uniform(3.0, 14.0) * ppc, top_y + rng.uniform(-2.5, 1.5) * ppc)
            _keep_unannotated(scene, ob.snap(rng, c, ppc), rng, blur)
    if rng.random() < 0.15:  # shirt buttons down the midline
        x = cx + rng.normal(0, 0.6) * ppc
        y = top_y + rng.uniform(-1.0, 3.0) * ppc
        step = rng.uniform(6.0, 9.0) * ppc
        while y < H:
            _keep_unannotated(scene, ob.button(rng, (x, y), ppc), rng, blur)
            y += step
            x += rng.normal(0, 0.3) * ppc
    if rng.random() < 0.1:  # bra hooks over the spine
        c = (cx + rng.normal(0, 0.4) * ppc, rng.uniform(top_y + 6 * ppc, diaphragm_y - 2 * ppc))
        _keep_unannotated(scene, ob.hook_clasp(rng, c, ppc), rng, blur)
    if rng.random() < 0.1:  # earrings beside the neck
        for side in (-1, 1):
            c = (cx + side * rng.uniform(5.0, 8.0) * ppc, top_y - rng.uniform(3.0, 8.0) * ppc)
            if c[1] > 0.5 * ppc and rng.random() < 0.8:
                _keep_unannotated(scene, ob.earring(rng, c, ppc), rng, blur)
    if rng.random() < 0.15:  # a feeding tube down the oesophagus into the stomach, or tubing beside the patient
        if rng.random() < 0.6:
            ys = np.linspace(-0.02 * H, diaphragm_y + rng.uniform(2.0, 5.0) * ppc, 40)
            xs = cx + rng.normal(0, 0.3) * ppc + np.clip(ys - diaphragm_y, 0, None) * rng.uniform(0.3, 1.2)
            path = np.stack([xs, ys], 1)
        else:  # oxygen tubing draped over the chest from the top of the film
            x = W / 2 + rng.uniform(-0.45, 0.45) * W
            path = _smooth_path(
                rng, (x, -0.02 * H), rng.uniform(0.5, 1.1) * H, math.pi / 2 + rng.normal(0, 0.3), 0.05, 50
            )
        if len(path) >= 4:
            _keep_unannotated(scene, ob.tube(rng, (0.0, 0.0), ppc, path), rng, blur)
    if rng.random() < 0.05:  # hair pins at the top of the film
        c = (cx + rng.normal(0, 4.0) * ppc, rng.uniform(1.5, 4.0) * ppc)
        _keep_unannotated(scene, ob.hair_pin(rng, c, ppc), rng, blur)
    if rng.random() < 0.1:  # pocket contents under the diaphragm
        region = outside(1.5) & (np.arange(H)[:, None] > diaphragm_y + 2 * ppc)
        for _ in range(int(rng.integers(1, 3))):
            c = _random_point(rng, region)
            if c is not None:
                make = [ob.coin, ob.stud, ob.paper_clip, ob.safety_pin][int(rng.integers(4))]
                _keep_unannotated(scene, make(rng, c, ppc), rng, blur)


def _annotated_objects(scene: Scene, rng: Rng, blur: float) -> None:
    """1–6 foreign objects over the lung fields, each kept only if its lung share passes the rule."""
    count = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.6, 0.2, 0.1, 0.05, 0.03, 0.02]))
    names = list(ob.ANNOTATED_KINDS)
    weights = np.array([ob.ANNOTATED_KINDS[n][0] for n in names])
    weights = weights / weights.sum()
    region = scene.lung_field
    placed_any = 0
    for attempt in range(count * 10):
        if placed_any >= count:
            break
        if attempt >= 10 * count - 1 and placed_any:
            break
        name = names[int(rng.choice(len(names), p=weights))]
        c = _random_point(rng, region)
        if c is None:
            return
        drawn = ob.ANNOTATED_KINDS[name][1](rng, c, scene.ppc)
        placed = ob.finish(drawn, ob.object_peak(rng, drawn.metal), blur, rng.uniform(0.0, 1.0))
        if not _inside_image(placed, scene.exposed) or _overlaps(placed.support_box, scene.annotated):
            continue
        if lung_share(placed, scene.lung_field) < ANNOTATED_MIN_LUNG_SHARE:
            continue
        scene.annotated.append(placed)
        placed_any += 1


# --- burned-in text and lead markers ---------------------------------------------------------------------------


@dataclass
class Overlay:
    """Bright marks drawn onto the displayed image (text burned in by the modality, lead side markers)."""

    mask: FloatArray  # coverage in [0, 1]
    value: FloatArray  # brightness where covered
    names: list[str]


def _text_overlay(rng: Rng, H: int, W: int, ppc: float, keep_clear: list[tuple[int, int, int, int]]) -> Overlay:
    mask = np.zeros((H, W), np.float32)
    value = np.zeros((H, W), np.float32)
    names: list[str] = []

    def stamp(layer: npt.NDArray[np.uint8], brightness: float) -> None:
        ys, xs = np.nonzero(layer)
        if len(xs) == 0:
            return
        box = (int(xs.min()) - 3, int(ys.min()) - 3, int(xs.max()) + 3, int(ys.max()) + 3)
        for x1, y1, x2, y2 in keep_clear:
            if box[0] <= x2 and x1 <= box[2] and box[1] <= y2 and y1 <= box[3]:
                return  # never over an annotated object
        cover = layer.astype(np.float32) / 255.0
        np.maximum(mask, cover, out=mask)
        value[cover > 0] = brightness

    if rng.random() < 0.5:
        names.append("burned_in_text")
        scale = H / 1024 * rng.uniform(0.6, 1.2)
        thickness = max(1, round(H / 512 * rng.uniform(0.7, 1.6)))
        for _ in range(int(rng.integers(1, 5))):
            words = [str(rng.choice(TEXT_SNIPPETS))]
            if rng.random() < 0.6:
                words.append(
                    f"{int(rng.integers(2000, 2024))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
                )
            if rng.random() < 0.4:
                words.append(f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}")
            text = " ".join(words)
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
            if tw >= W - 8 or th >= H // 4:
                continue
            x = int(rng.uniform(0.01, 0.04) * W) if rng.random() < 0.5 else int(W - tw - rng.uniform(0.01, 0.04) * W)
            y = int(rng.uniform(0.02, 0.12) * H + th) if rng.random() < 0.6 else int(H - rng.uniform(0.02, 0.1) * H)
            layer = np.zeros((H, W), np.uint8)
            cv2.putText(layer, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
            stamp(layer, rng.uniform(0.85, 1.0))
    if rng.random() < 0.7:  # lead side markers are standard practice
        names.append("side_marker")
        letter = "L" if rng.random() < 0.5 else "R"
        size = rng.uniform(1.2, 2.0) * ppc
        mx = rng.uniform(0.04, 0.16) * W if rng.random() < 0.5 else rng.uniform(0.78, 0.9) * W
        my = rng.uniform(0.04, 0.25) * H
        layer = np.zeros((H, W), np.uint8)
        cv2.putText(
            layer,
            letter,
            (int(mx), int(my + size)),
            cv2.FONT_HERSHEY_SIMPLEX,
            size / 22.0,
            255,
            max(1, round(0.2 * ppc)),
            cv2.LINE_AA,
        )
        if rng.random() < 0.5:  # the marker's plastic frame
            cv2.rectangle(
                layer,
                (int(mx - 0.2 * size), int(my - 0.1 * size)),
                (int(mx + 0.9 * size), int(my + 1.2 * size)),
                140,
                max(1, round(0.08 * ppc)),
            )
        stamp(np.asarray(cv2.GaussianBlur(layer, (3, 3), 0.6), np.uint8), rng.uniform(0.8, 1.0))
    return Overlay(mask, value, names)


# --- display ---------------------------------------------------------------------------------------------------


@dataclass
class Display:
    """The per-image acquisition and display settings (drawn before any object, so both renders share them)."""

    blur: float
    window_full_range: bool
    window_low_pct: float
    window_high_gain: float
    knee: float
    tone: str
    gamma: float
    sigmoid_gain: float
    grain: float
    gain_pattern: float
    grid_lines: float
    grid_period: float
    grid_vertical: bool
    banding: float
    bits: int
    shutter_value: float
    png16: bool


def draw_display(rng: Rng, H: int) -> Display:
    return Display(
        blur=rng.uniform(0.2, 1.2) * H / 512,
        window_full_range=bool(rng.random() < 0.5),
        window_low_pct=rng.uniform(0.1, 2.0),
        window_high_gain=rng.uniform(1.0, 1.12),
        knee=rng.uniform(0.8, 0.92),
        tone="sigmoid" if rng.random() < 0.35 else "gamma",
        gamma=rng.uniform(0.7, 1.5),
        sigmoid_gain=rng.uniform(3.0, 7.0),
        grain=rng.uniform(0.005, 0.03),
        gain_pattern=rng.uniform(0.0, 0.05),
        grid_lines=rng.uniform(0.003, 0.015) if rng.random() < 0.3 else 0.0,
        grid_period=rng.uniform(2.2, 4.5),
        grid_vertical=bool(rng.random() < 0.5),
        banding=rng.uniform(0.002, 0.008) if rng.random() < 0.2 else 0.0,
        bits=int(rng.choice([8, 10, 12, 14], p=[0.25, 0.25, 0.3, 0.2])),
        shutter_value=rng.uniform(0.0, 0.08) if rng.random() < 0.5 else rng.uniform(0.85, 1.0),
        png16=bool(rng.random() < 0.5),
    )


def _tone(unit: FloatArray, d: Display, gamma: float) -> FloatArray:
    # Soft shoulder above the knee: metal above the window keeps its holes and loops instead of clipping flat.
    over = np.maximum(unit - d.knee, 0.0)
    unit = np.minimum(unit, d.knee) + (1.0 - d.knee) * (1.0 - np.exp(-over / (1.0 - d.knee)))
    if d.tone == "sigmoid":  # film-like S curve, rescaled so 0 → 0 and 1 → 1
        lo, hi = 1.0 / (1.0 + math.exp(d.sigmoid_gain * 0.5)), 1.0 / (1.0 + math.exp(-d.sigmoid_gain * 0.5))
        out: FloatArray = ((1.0 / (1.0 + np.exp(-d.sigmoid_gain * (unit - 0.5)))) - lo) / (hi - lo)
        return out.astype(np.float32)
    result: FloatArray = (unit**gamma).astype(np.float32)
    return result


def display(
    density: FloatArray, full: FloatArray, anatomy: FloatArray, exposed: BoolArray, d: Display, noise_rng: Rng
) -> FloatArray:
    """Density → displayed brightness in [0, 1]. The window comes from ``full`` (every object drawn) and
    ``anatomy``, never from ``density`` itself, so removing objects changes only their own pixels."""
    H, W = density.shape
    sub_full = full[::4, ::4][exposed[::4, ::4]]
    lo = float(np.percentile(sub_full, d.window_low_pct))
    if d.window_full_range:
        hi = float(sub_full.max())
        gamma = d.gamma * 0.7  # lifts the anatomy that a full-range window compresses
    else:
        hi = float(np.percentile(anatomy[::4, ::4][exposed[::4, ::4]], 99.8)) * d.window_high_gain
        gamma = d.gamma
    unit = np.clip((density - lo) / max(hi - lo, 1e-6), 0.0, None).astype(np.float32)
    unit = _tone(unit, d, gamma)
    noise = noise_rng.standard_normal((H, W), dtype=np.float32)
    gain = 1.0 + d.gain_pattern * cv2.resize(
        noise_rng.standard_normal((max(2, H // 96), max(2, W // 96)), dtype=np.float32),
        (W, H),
        interpolation=cv2.INTER_CUBIC,
    )
    # Quantum noise grows with brightness; monotone in brightness for |noise| < 1 / (0.8 · grain), so an object
    # never darkens a pixel.
    unit = unit * np.maximum(gain, 0.5) + d.grain * (0.5 + 0.8 * unit) * noise
    if d.grid_lines > 0:
        axis = np.arange(W if d.grid_vertical else H, dtype=np.float32)
        lines = d.grid_lines * np.sin(2 * np.pi * axis / d.grid_period)
        unit = unit + (lines[None, :] if d.grid_vertical else lines[:, None])
    if d.banding > 0:
        unit = unit + d.banding * noise_rng.standard_normal((H, 1), dtype=np.float32)
    shutter = d.shutter_value + 0.3 * d.grain * noise
    unit = np.where(exposed, unit, shutter)
    levels = float(2**d.bits - 1)
    unit = np.round(np.clip(unit, 0.0, 1.0) * levels) / levels
    return unit.astype(np.float32)


def render_v2(
    seed_sequence: np.random.SeedSequence,
    size: int,
    *,
    with_objects: bool = True,
    bank: LungMaskBank | None = None,
    label: int | None = None,
) -> tuple[FloatArray, Scene, Overlay, Display, bool]:
    """Draw one v2 radiograph from its seed sequence: (image, scene, overlay, display, positive)."""
    anatomy_seq, scene_seq, objects_seq, noise_seq = seed_sequence.spawn(4)
    rng = np.random.default_rng(anatomy_seq)
    H = size
    W = max(16, min(size, round(size * rng.uniform(0.78, 1.0))))
    positive = bool(rng.random() < POSITIVE_RATE) if label is None else bool(label)
    scene = build_scene(rng, H, W, bank or default_bank())
    d = draw_display(rng, H)
    anatomy = scene.density
    if d.blur > 0.05:
        anatomy = np.asarray(cv2.GaussianBlur(scene.density, (0, 0), d.blur), np.float32)
    _unannotated_objects(scene, np.random.default_rng(scene_seq), d.blur)
    if positive:
        _annotated_objects(scene, np.random.default_rng(objects_seq), d.blur)
        positive = bool(scene.annotated)  # every attempt failed (tiny lungs): keep the label honest
    overlay_rng = np.random.default_rng(scene_seq.spawn(1)[0])
    overlay = _text_overlay(overlay_rng, H, W, scene.ppc, [o.support_box for o in scene.annotated])
    background = anatomy.copy()
    for o in scene.unannotated:
        add_patch(background, o)
    full = background.copy()
    for o in scene.annotated:
        add_patch(full, o)
    image = display(
        full if with_objects else background, full, anatomy, scene.exposed, d, np.random.default_rng(noise_seq)
    )
    image = np.maximum(image, overlay.mask * overlay.value) if overlay.names else image
    return image.astype(np.float32), scene, overlay, d, positive
