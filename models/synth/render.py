"""Compose one synthetic radiograph: anatomy + look-alikes + foreign objects → tone curve → noise.

Image formation, simplified: the summed density along the beam is turned into brightness by
``1 - exp(-mu · density)`` (dense = bright, as radiographs are displayed), windowed between the air and
the densest anatomy with exposure, contrast and gamma varying per image, then quantum noise whose
amplitude grows with brightness (fewer photons behind dense tissue) and a faint detector pattern are added.

The window is computed from the image *without* foreign objects and noise is drawn from its own random
stream, so rendering the same sample with and without objects changes exactly the objects' pixels — the
tests use that to check every annotation covers its object.

Randomness: every image has its own generator seeded from (seed, split, index), so the n-th image of a
split is the same whatever the split sizes are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from models.datasets import POLYGON, Annotation
from models.synth import objects as obj
from models.synth.anatomy import Chest, build_chest
from models.synth.lungs import LungMaskBank, default_bank

SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}
POSITIVE_RATE = 0.5


@dataclass(frozen=True)
class RenderedObject:
    """One object of a rendered image: its density patch (top-left pixel at ``x0, y0``) and its annotation, or
    ``None`` for an object that the annotation rule leaves unannotated (outside the lung fields, or a support
    device: electrodes, leads and tubes are never annotated)."""

    kind: str
    density: np.ndarray
    x0: int
    y0: int
    annotation: Annotation | None
    support_device: bool = False


@dataclass
class Rendered:
    """One synthetic radiograph: float32 brightness in [0, 1] and what is in it.

    ``objects`` (styles v2 and heldout) lists every drawn object, annotated or not, and ``lung_field`` is the
    lung-field mask the annotation rule was applied with; ``settings`` holds the image's acquisition draws.
    """

    image: np.ndarray
    label: int
    annotations: tuple[Annotation, ...]
    object_kinds: tuple[str, ...]
    lookalikes: tuple[str, ...]
    lung_mask_name: str
    style: str = "v1"
    objects: tuple[RenderedObject, ...] = ()
    lung_field: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def unannotated_kinds(self) -> tuple[str, ...]:
        return tuple(o.kind for o in self.objects if o.annotation is None)


def sample_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    code = SPLIT_CODES.get(split)
    if code is None:  # any other split name: a stable code from its bytes
        code = 3 + int.from_bytes(split.encode("utf-8")[:8].ljust(8, b"\0"), "little")
    return np.random.SeedSequence([int(seed), code, int(index)])


def image_shape(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(height, width): the long side is ``size``, portrait with width/height in [0.8, 1.0]."""
    width = round(size * rng.uniform(0.8, 1.0))
    return size, max(16, min(size, width))


def _place(rng: np.random.Generator, chest: Chest, inside_lung: float) -> tuple[float, float]:
    """A centre for an object: in the lung fields with probability ``inside_lung``, else on the trunk."""
    H, W = chest.height, chest.width
    if rng.random() < inside_lung:
        pts = np.argwhere(chest.lung[::4, ::4] > 0.5) * 4
    else:
        _x1, y1, _x2, y2 = chest.lung_box
        region = chest.body[::4, ::4] > 0.5
        rows = np.arange(region.shape[0])[:, None] * 4
        region &= (rows > y1 - 0.05 * H) & (rows < y2 + 0.12 * H)
        pts = np.argwhere(region) * 4
    if len(pts) == 0:
        return W / 2.0, H / 2.0
    y, x = pts[rng.integers(len(pts))] + rng.uniform(0, 4, 2)
    return float(x), float(y)


def _fit_inside(patch: obj.Patch, H: int, W: int) -> obj.Patch | None:
    """Shift an object back inside the image if its patch pokes out, then clamp its annotation points to the
    image (the object's pixels are then all inside, so clamping never cuts the annotation off them)."""
    h, w = patch.density.shape
    if h > H or w > W:
        return None
    dx = min(0, W - 1 - (patch.x0 + w - 1)) + max(0, -patch.x0)
    dy = min(0, H - 1 - (patch.y0 + h - 1)) + max(0, -patch.y0)
    moved = []
    for a in patch.annotations:
        pts = [(min(max(x + dx, 0.0), W - 1.0), min(max(y + dy, 0.0), H - 1.0)) for x, y in a.points]
        pts = [p for k, p in enumerate(pts) if k == 0 or p != pts[k - 1]]  # clamping can repeat a vertex
        if a.kind == POLYGON and len(pts) > 3 and pts[-1] == pts[0]:
            pts.pop()
        if len(pts) < (3 if a.kind == POLYGON else 2):
            return None
        moved.append(Annotation(a.kind, tuple(pts)))
    return obj.Patch(patch.density, patch.x0 + dx, patch.y0 + dy, patch.kind_name, tuple(moved))


def _foreign_objects(rng: np.random.Generator, chest: Chest) -> list[obj.Patch]:
    H, W, ppc = chest.height, chest.width, chest.px_per_cm
    count = int(rng.choice([1, 2, 3, 4], p=[0.55, 0.25, 0.12, 0.08]))
    names = list(obj.FOREIGN_OBJECTS)
    weights = np.array([obj.FOREIGN_OBJECTS[n][0] for n in names])
    patches: list[obj.Patch] = []
    for _ in range(count):
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        render = obj.FOREIGN_OBJECTS[name][1]
        if name == "necklace":
            made = render(rng, None, ppc, W, H, chest.centre_x, chest.lung_box[1] - rng.uniform(0, 4) * ppc)
        else:
            made = render(rng, _place(rng, chest, 0.8), ppc, W, H)
        for p in made if isinstance(made, list) else [made]:
            fitted = _fit_inside(p, H, W)
            if fitted is not None:
                patches.append(fitted)
    return patches


def render_sample(
    seed: int,
    split: str,
    index: int,
    size: int = 1024,
    *,
    with_objects: bool = True,
    bank: LungMaskBank | None = None,
    label: int | None = None,
) -> Rendered:
    """Render image ``index`` of ``split`` for ``seed``. ``with_objects=False`` gives the same radiograph
    without its foreign objects (same anatomy, exposure and noise). ``label`` forces the class."""
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    anatomy_seq, objects_seq, noise_seq = sample_seed(seed, split, index).spawn(3)
    rng = np.random.default_rng(anatomy_seq)
    H, W = image_shape(size, rng)
    is_positive = bool(rng.random() < POSITIVE_RATE) if label is None else bool(label)
    bank = bank or default_bank()
    mask, mask_name = bank.draw(rng)
    chest = build_chest(H, W, rng, mask, mask_name)
    looks, look_names = obj.distractors(rng, H, W, chest.px_per_cm, chest.lung, chest.lung_box, chest.centre_x)
    if chest.notes.get("breast_shadows"):
        look_names.insert(0, "breast_shadows")
    density = chest.density + looks

    # Slight patient rotation (applied to the anatomy; objects lie on the rotated patient anyway).
    angle = rng.uniform(-3.0, 3.0)
    rot = cv2.getRotationMatrix2D((W / 2.0, H / 2.0), angle, 1.0)
    density = np.asarray(
        cv2.warpAffine(density, rot, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101), np.float32
    )
    chest.lung = cv2.warpAffine(chest.lung, rot, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    chest.body = cv2.warpAffine(chest.body, rot, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    # Exposure: attenuation coefficient, window and gamma per image, from the object-free anatomy.
    mu = rng.uniform(0.8, 1.3)
    bright = 1.0 - np.exp(-mu * density)
    sub = bright[::4, ::4]
    lo = float(np.percentile(sub, rng.uniform(0.2, 2.0)))
    hi = float(np.percentile(sub, 99.7)) * rng.uniform(1.0, 1.06)
    gamma = rng.uniform(1.0, 1.6)
    noise_rng = np.random.default_rng(noise_seq)
    noise = noise_rng.standard_normal((H, W), dtype=np.float32)
    grain = rng.uniform(0.006, 0.02)
    pattern = cv2.resize(
        noise_rng.standard_normal((max(2, H // 64), max(2, W // 64)), dtype=np.float32),
        (W, H),
        interpolation=cv2.INTER_CUBIC,
    ) * rng.uniform(0.0, 0.015)

    annotations: list[Annotation] = []
    kinds: list[str] = []
    if is_positive:
        orng = np.random.default_rng(objects_seq)
        patches = _foreign_objects(orng, chest)
        for p in patches:
            h, w = p.density.shape
            if with_objects:
                density[p.y0 : p.y0 + h, p.x0 : p.x0 + w] += p.density
            annotations.extend(p.annotations)
            kinds.append(p.kind_name)
        if with_objects:
            bright = 1.0 - np.exp(-mu * density)
    unit = np.clip((bright - lo) / max(hi - lo, 1e-6), 0.0, None)
    # Soft shoulder instead of a hard clip (detector latitude): metal above the window keeps its holes, rims
    # and wire loops instead of flattening into white; smooth and monotone, so objects never darken.
    knee = 0.85
    over = np.maximum(unit - knee, 0.0)
    unit = np.minimum(unit, knee) + (1.0 - knee) * (1.0 - np.exp(-over / (1.0 - knee)))
    unit = unit**gamma
    # Quantum noise grows with brightness; monotone in brightness for |noise| < 1/(0.8·grain) so adding an
    # object never darkens a pixel.
    unit = unit + grain * (0.6 + 0.8 * unit) * noise + pattern
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    if is_positive and not annotations:  # every object was too big to fit: keep the label honest
        is_positive = False
    return Rendered(unit, int(is_positive), tuple(annotations), tuple(kinds), tuple(look_names), mask_name)
