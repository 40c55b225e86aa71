"""The papers' seed code's map post-processing, as an option (``postprocess="seed"``; docs/saliency.md).

NormGate's maps are float maps at the input resolution: Grad-CAM upsampled bilinearly from the layer's grid,
guided backpropagation as |gradient| summed over channels. The published tables (Özer & Öksüz 2021, Özer et al.
2023) were made with the seed code (canerozer/explainable-iqa, after Utku Özbulak's pytorch-cnn-visualizations),
whose maps differ in three ways that change where the argmax lies:

- **Grad-CAM from 8 bits with Lanczos.** The ReLU'd layer map is min–max normalised, truncated to 8-bit
  integers (``uint8(cam × 255)``), resized to the input size with PIL's Lanczos filter (``Image.ANTIALIAS``, an
  alias of ``Image.LANCZOS``) on the 8-bit image, and divided by 255. The result has only 256 levels, so the
  peak of a smooth map is a plateau of equal pixels; the Pointing Game's argmax rule (first maximum in
  row-major order) then takes the plateau's upper-left pixel. Lanczos also rings (over/undershoot, clipped to
  0–255 by PIL).
- **Positive part of guided backprop.** ``max(0, g) / max(g)`` per image (the seed's positive saliency), then
  summed over channels — not |g|.
- **99th-percentile clip.** The channel sum is min–max normalised with the 99th percentile as the top and
  clipped to [0, 1]: the brightest 1 % of pixels all become 1, another plateau whose first pixel in row-major
  order is the argmax.

Gaussian smoothing of the map (σ = 1) breaks such plateaus, which is one reason the papers see large smoothing
effects. One difference of the seed code is not reproduced: its Grad-CAM starts the weighted sum from ones
(``cam = 1 + Σ_k w_k A_k`` before the ReLU), which only moves the ReLU's threshold to −1; NormGate keeps the
paper's ReLU(Σ_k w_k A_k) (Özer et al. 2023 eqs. 10–11).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

POSTPROCESS_MODES = ("none", "seed")
SEED_CLIP_PERCENTILE = 99.0


def check_postprocess(postprocess: str) -> str:
    if postprocess not in POSTPROCESS_MODES:
        raise ValueError(f"unknown postprocess {postprocess!r}; choose one of {', '.join(POSTPROCESS_MODES)}")
    return postprocess


def seed_gradcam_upsample(cams: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[B, h, w] non-negative layer maps → [B, H, W] in [0, 1]: min–max, 8-bit, PIL Lanczos, / 255."""
    height, width = int(size[0]), int(size[1])
    out = torch.empty((cams.shape[0], height, width), dtype=torch.float32)
    for i, cam in enumerate(cams.detach().to("cpu", torch.float64).numpy()):
        low, high = float(cam.min()), float(cam.max())
        unit = (cam - low) / (high - low) if high > low else np.zeros_like(cam)
        eight_bit = Image.fromarray((unit * 255.0).astype(np.uint8))  # astype truncates, as np.uint8 does
        resized = eight_bit.resize((width, height), Image.Resampling.LANCZOS)
        out[i] = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)
    return out.to(cams.device)


def seed_guided_backprop_map(gradients: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] guided gradients → [B, H, W] in [0, 1]: positive part / max, channel sum, 99th-pct clip."""
    out = torch.empty((gradients.shape[0], *gradients.shape[-2:]), dtype=torch.float32)
    for i, grad in enumerate(gradients.detach().to("cpu", torch.float64).numpy()):
        top = float(grad.max())
        positive = np.maximum(grad, 0.0) / top if top > 0 else np.zeros_like(grad)
        gray = positive.sum(axis=0)
        low, clip_top = float(gray.min()), float(np.percentile(gray, SEED_CLIP_PERCENTILE))
        scaled = (gray - low) / (clip_top - low) if clip_top > low else np.zeros_like(gray)
        out[i] = torch.from_numpy(np.clip(scaled, 0.0, 1.0).astype(np.float32))
    return out.to(gradients.device)
