"""One preprocessing path for training, evaluation and the service.

A radiograph arrives as a single-channel array (any size, 8/16-bit or float). It is scaled to [0, 1],
resized to the model grid by stretching (so the heatmap maps onto the whole original image: docs/api.md,
"POST /assess"), duplicated to three channels as in the papers (grayscale → RGB), and normalised with the
checkpoint's mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def to_unit_float(gray: np.ndarray) -> np.ndarray:
    """A 2-D array as float32 in [0, 1]: integers by their dtype's range, floats clipped."""
    if gray.ndim != 2:
        raise ValueError(f"expected a single-channel 2-D image, got shape {gray.shape}")
    if np.issubdtype(gray.dtype, np.integer):
        info = np.iinfo(gray.dtype)
        out = (gray.astype(np.float32) - info.min) / float(info.max - info.min)
    else:
        out = gray.astype(np.float32, copy=False)
        # Decoders already deliver [0, 1]: checking costs two reads, clipping a 30 MB copy of a radiograph.
        # (NaN fails the test and goes through clip, as before.)
        if out.size == 0 or not (out.min() >= 0.0 and out.max() <= 1.0):
            out = np.clip(out, 0.0, 1.0)
    return out


def resize_unit(gray: np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """[H, W] array in [0, 1] → float32 tensor [h, w] by antialiased bilinear resize (stretch)."""
    h, w = int(size[0]), int(size[1])
    unit = to_unit_float(gray)  # may be the caller's own array: read it, never write it
    if unit.shape == (h, w):
        return torch.tensor(unit, dtype=torch.float32)
    if not (unit.flags.c_contiguous and unit.flags.writeable):  # torch.from_numpy needs both
        unit = np.array(unit, dtype=np.float32, order="C")
    t = F.interpolate(
        torch.from_numpy(unit)[None, None], size=(h, w), mode="bilinear", align_corners=False, antialias=True
    )
    return t[0, 0].clamp_(0.0, 1.0)


def normalise(batch_unit: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, h, w] in [0, 1] → [B, 3, h, w] normalised (grayscale duplicated to three channels)."""
    x = batch_unit[:, None].expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


def preprocess_batch(
    images: Sequence[np.ndarray], input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Several grayscale radiographs → one normalised model batch [B, 3, h, w]."""
    unit = torch.stack([resize_unit(img, input_size) for img in images])
    return normalise(unit, mean, std)


def grid_point_to_original(x: float, y: float, grid_hw: Sequence[int], original_hw: Sequence[int]) -> tuple[int, int]:
    """Map a pixel of the model grid to the original image (pixel centres align; x = column, y = row)."""
    gh, gw = grid_hw
    oh, ow = original_hw
    ox = (x + 0.5) * ow / gw - 0.5
    oy = (y + 0.5) * oh / gh - 0.5
    return int(min(max(round(ox), 0), ow - 1)), int(min(max(round(oy), 0), oh - 1))


def original_box_to_grid(
    box: Sequence[float], original_hw: Sequence[int], grid_hw: Sequence[int]
) -> tuple[float, float, float, float]:
    """Scale an (x1, y1, x2, y2) box in original pixels to the model grid."""
    oh, ow = original_hw
    gh, gw = grid_hw
    sx, sy = gw / ow, gh / oh
    x1, y1, x2, y2 = box
    return x1 * sx, y1 * sy, x2 * sx, y2 * sy
