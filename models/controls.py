"""Model-free control "saliency" maps: what image processing alone scores in the Pointing Game.

A saliency method's Pointing Game only means something next to what no model at all can do on the same images.
``random`` (uniform noise, in :mod:`models.evaluation`) gives the chance level; the controls here give the level of
simple image processing, so that a table can separate a trained network's explanation from a filter:

- :func:`tophat_map` — the white top-hat (Serra, *Image Analysis and Mathematical Morphology*, 1982; Gonzalez &
  Woods, *Digital Image Processing*, §9.6.3): ``image − opening(image, disk)``. It keeps bright structures
  narrower than the disk and removes everything broader, i.e. it is the textbook "small bright object" detector.
- :func:`brightest_map` — the image itself: the argmax is the brightest pixel.
- :func:`centre_map` — a cone peaking at the centre of the grid: the argmax is the image centre, the prior of a
  radiograph centred on the chest.
- :func:`random_control_maps` — seeded uniform noise per (model, image): the chance level.

The three image controls take a batch of unit-range grayscale images on the model grid, ``[B, H, W]`` float in
[0, 1] (what :func:`models.imaging.grid.resize_unit` makes), and return maps of the same shape, float32, on the
CPU. They are pure functions of the pixels (``centre_map`` of the shape only): no model, no learned parameter, no
randomness.

The controls are registered here (:func:`register_control`, :func:`list_controls`, :func:`control_maps`), apart
from the saliency methods of :mod:`models.saliency.registry`: they are *evaluation-only* methods, which the
Pointing Game job accepts and every table shows, marked as controls, but which no explanation API lists or serves
(they explain no model).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import torch

# Diameter of the top-hat's disk as a fraction of the grid's shorter side. Object-CXR's objects run from ~1 % of
# the side (buttons, snaps) over 2–5 % (coins, clips, electrodes) to long thin wires and chains, which are narrow
# across (< 1 %) however long they are: a disk of 6 % is wider than every one of them across, so the opening
# removes them whole and the top-hat keeps their full height above the local background. It stays well under the
# width of a lung field (~35 % of the side), the mediastinum and the heart (~20–30 %), so broad anatomy is
# flattened. At the papers' 600-px grid it is a 37-px disk, at a 256-px grid a 15-px disk. It is also the best of
# the diameters 2–16 % on a generator v2 dev split (docs/data.md, "Model-free controls";
# benchmarks/synth_v2_controls.py --sweep), so the control is the strongest top-hat of that family, not a straw man.
TOPHAT_ELEMENT_FRACTION = 0.06


def _as_batch(images: torch.Tensor) -> npt.NDArray[np.float32]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, H, W], got {type(images).__name__}")
    if images.ndim != 3 or images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"images must be a non-empty [B, H, W] batch, got shape {tuple(images.shape)}")
    if not torch.is_floating_point(images):
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    batch: npt.NDArray[np.float32] = images.detach().to("cpu", torch.float32).contiguous().numpy()
    return batch


def disk_element(diameter: int) -> npt.NDArray[np.uint8]:
    """A flat disk structuring element of ``diameter`` pixels (odd; 1 is a single pixel)."""
    if diameter < 1 or diameter % 2 == 0:
        raise ValueError(f"the disk's diameter must be a positive odd number of pixels, got {diameter}")
    r = diameter // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    element: npt.NDArray[np.uint8] = ((xx * xx + yy * yy) <= r * r + r).astype(np.uint8)  # +r: round, not diamond
    return element


def element_diameter(height: int, width: int, fraction: float = TOPHAT_ELEMENT_FRACTION) -> int:
    """The disk's diameter in pixels for a grid: ``fraction`` of the shorter side, rounded to an odd number ≥ 3."""
    if not (0.0 < fraction < 1.0) or not math.isfinite(fraction):
        raise ValueError(f"the element fraction must lie in (0, 1), got {fraction!r}")
    d = round(fraction * min(height, width))
    if d % 2 == 0:
        d += 1
    return max(3, d)


def tophat_map(images: torch.Tensor, element_fraction: float = TOPHAT_ELEMENT_FRACTION) -> torch.Tensor:
    """White top-hat ``image − opening(image, disk)`` per image, disk diameter ``element_fraction`` of the side.

    Pixels outside the image take no part in the erosion and dilation (OpenCV's default morphology border), so
    the opening near an edge is that of the pixels inside. Values are ≥ 0; a bright structure narrower than the
    disk keeps its height above its surroundings, anything wider goes to 0.
    """
    batch = _as_batch(images)
    _, h, w = batch.shape
    element = disk_element(element_diameter(h, w, element_fraction))
    out = np.empty_like(batch)
    for i, img in enumerate(batch):
        opened = cv2.morphologyEx(img, cv2.MORPH_OPEN, element)
        out[i] = np.maximum(img - opened, 0.0)
    return torch.from_numpy(out)


def brightest_map(images: torch.Tensor) -> torch.Tensor:
    """The images themselves (a copy): the map's argmax is the brightest pixel (first in row-major order on ties)."""
    return torch.from_numpy(_as_batch(images).copy())


def centre_map(images: torch.Tensor) -> torch.Tensor:
    """``1 − r / r_max`` with r the distance to the grid's centre ((H−1)/2, (W−1)/2): the peak is the centre.

    On an even side the centre falls between pixels; the four pixels around it tie and the Pointing Game's
    argmax rule (first in row-major order) takes the upper-left one.
    """
    batch = _as_batch(images)
    b, h, w = batch.shape
    ys = np.arange(h, dtype=np.float64) - (h - 1) / 2.0
    xs = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    r = np.hypot(ys[:, None], xs[None, :])
    cone = (1.0 - r / max(float(r.max()), 1e-12)).astype(np.float32)
    return torch.from_numpy(np.repeat(cone[None], b, axis=0))


def stable_seed(*parts: object) -> int:
    """A seed that depends only on the given values (Python's hash() is salted per process)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def random_control_maps(keys: Sequence[str], model_key: str, grid_hw: Sequence[int], seed: int) -> torch.Tensor:
    """The ``random`` control: uniform noise per (model, image), independent of batch composition."""
    h, w = int(grid_hw[0]), int(grid_hw[1])
    maps = torch.empty((len(keys), h, w), dtype=torch.float32)
    for i, key in enumerate(keys):
        generator = torch.Generator().manual_seed(stable_seed(seed, model_key, key))
        maps[i] = torch.rand((h, w), generator=generator)
    return maps


# --- the registry of evaluation-only control methods ---------------------------------------------------------


@dataclass(frozen=True)
class ControlInputs:
    """What a control may look at: the unit-range images on the model grid [B, H, W], the images' stable names,
    the evaluated model's name and the run's seed (the last three only make ``random`` reproducible)."""

    unit_images: torch.Tensor
    keys: Sequence[str]
    model_key: str
    seed: int


@dataclass(frozen=True)
class ControlMethod:
    control_id: str
    compute: Callable[[ControlInputs], torch.Tensor]  # -> [B, H, W] float32 on the CPU
    summary: str


_CONTROLS: dict[str, ControlMethod] = {}


def register_control(control_id: str, compute: Callable[[ControlInputs], torch.Tensor], summary: str) -> None:
    if control_id in _CONTROLS:
        raise ValueError(f"control {control_id!r} is already registered")
    _CONTROLS[control_id] = ControlMethod(control_id, compute, summary)


def list_controls() -> list[str]:
    """Control ids, in registration order (the order the tables list them, after the saliency methods)."""
    return list(_CONTROLS)


def get_control(control_id: str) -> ControlMethod:
    try:
        return _CONTROLS[control_id]
    except (KeyError, TypeError):
        raise ValueError(f"unknown control {control_id!r}; choose one of {', '.join(_CONTROLS)}") from None


def control_maps(control_id: str, inputs: ControlInputs) -> torch.Tensor:
    """The control's maps [B, H, W] (float32, CPU) for ``inputs``; checked to match the images' shape."""
    images = inputs.unit_images
    if images.ndim != 3 or len(inputs.keys) != images.shape[0]:
        raise ValueError(
            f"a control needs [B, H, W] unit images and one key per image, got {tuple(images.shape)} and "
            f"{len(inputs.keys)} keys"
        )
    maps = get_control(control_id).compute(inputs).to("cpu", torch.float32)
    if tuple(maps.shape) != tuple(images.shape):
        raise RuntimeError(
            f"control {control_id} gave maps of shape {tuple(maps.shape)}, expected {tuple(images.shape)}"
        )
    return maps


register_control(
    "control-tophat",
    lambda i: tophat_map(i.unit_images),
    f"white top-hat, disk {TOPHAT_ELEMENT_FRACTION:.0%} of the side: small bright structures",
)
register_control("control-brightest", lambda i: brightest_map(i.unit_images), "the brightest pixel")
register_control("control-centre", lambda i: centre_map(i.unit_images), "the centre of the image")
register_control(
    "random",
    lambda i: random_control_maps(i.keys, i.model_key, i.unit_images.shape[-2:], i.seed),
    "seeded uniform noise per (model, image): the chance level",
)
