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

All three take a batch of unit-range grayscale images on the model grid, ``[B, H, W]`` float in [0, 1] (what
:func:`models.imaging.grid.resize_unit` makes), and return maps of the same shape, float32, on the CPU. They are
pure functions of the pixels (``centre_map`` of the shape only): no model, no learned parameter, no randomness.
"""

from __future__ import annotations

import math

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


CONTROL_MAPS = {"control-tophat": tophat_map, "control-brightest": brightest_map, "control-centre": centre_map}
