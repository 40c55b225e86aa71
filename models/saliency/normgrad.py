"""NormGrad saliency (Rebuffi et al., CVPR 2020), as used by Ozer et al. (MIDL 2021; arXiv:2303.14479).

A virtual identity layer sits right after each hooked module; with activation x and upstream gradient g of
the target logit at spatial location u, the norm of that layer's weight-gradient contribution at u is
(Ozer et al. 2023, table 1; docs/algorithms.md, "NormGrad"):

    bias     ‖g_u‖
    scaling  ‖g_u ⊙ x_u‖
    conv1x1  ‖g_u‖ · ‖x_u‖                 (Frobenius norm of the outer product g_u x_uᵀ)
    conv3x3  ‖g_u‖ · ‖x_{u,3×3}‖           (x over the 3×3 neighbourhood of u, all channels, zero padding)

‖x_{u,3×3}‖² is the 3×3 sum-pool of the channel sum of squares (no ``unfold``: K·9 times less memory).
Each map is upsampled bilinearly to the input size. Combined maps are the geometric mean of the J layer maps
(eq. 16, ∏ m_j^{1/J}). ``combine="minmax-product"`` reproduces the seed code (canerozer/explainable-iqa
``src/normgrad.py``): each upsampled map min–max scaled to [0, 1] per image, then multiplied, with the bias
map of the last block left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.saliency.hooks import upsample_maps

LAYER_KINDS = ("bias", "scaling", "conv1x1", "conv3x3")
COMBINE_MODES = ("geometric-mean", "minmax-product")


def _channel_norm(t: torch.Tensor) -> torch.Tensor:
    """[B, K, h, w] → [B, h, w] Euclidean norm over the channels."""
    norm: torch.Tensor = torch.linalg.vector_norm(t, dim=1)
    return norm


def layer_map(kind: str, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """[B, K, h, w] activation and gradient → [B, h, w] NormGrad map of one virtual identity layer."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown NormGrad layer type {kind!r}; choose one of {LAYER_KINDS}")
    # float32 so bf16/fp16 activations neither overflow nor lose the small gradients when squared.
    g = gradient.float()
    if kind == "bias":
        return _channel_norm(g)
    x = activation.float()
    if kind == "scaling":
        return _channel_norm(g * x)
    grad_norm = _channel_norm(g)
    if kind == "conv1x1":
        return grad_norm * _channel_norm(x)
    channel_sq = x.square().sum(dim=1, keepdim=True)
    neighbourhood_sq = F.avg_pool2d(channel_sq, kernel_size=3, stride=1, padding=1, divisor_override=1)
    return grad_norm * neighbourhood_sq[:, 0].sqrt()


def combine_maps(maps: Sequence[torch.Tensor], mode: str = "geometric-mean", skip_last: bool = False) -> torch.Tensor:
    """J upsampled [B, H, W] maps → one [B, H, W] map."""
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown combine mode {mode!r}; choose one of {COMBINE_MODES}")
    if not maps:
        raise ValueError("no maps to combine")
    if mode == "geometric-mean":
        exponent = 1.0 / len(maps)
        out = maps[0].pow(exponent)
        for m in maps[1:]:
            out = out * m.pow(exponent)
        return out
    used = list(maps[:-1]) if skip_last and len(maps) > 1 else list(maps)
    product: torch.Tensor | None = None
    for m in used:
        flat = m.flatten(1)
        low = flat.min(dim=1).values[:, None, None]
        span = flat.max(dim=1).values[:, None, None] - low
        # A constant map carries no location; the seed code would divide by zero here.
        scaled = torch.where(span > 0, (m - low) / span.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
        product = scaled if product is None else product * scaled
    assert product is not None  # maps is not empty, so neither is used
    return product


def normgrad_maps(
    kind: str,
    activations: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    input_size: Sequence[int],
    combine: str = "geometric-mean",
) -> torch.Tensor:
    """Per-layer maps, upsampled to ``input_size`` and combined ([B, H, W] float32, ≥ 0)."""
    upsampled = [upsample_maps(layer_map(kind, a, g), input_size) for a, g in zip(activations, gradients)]
    if len(upsampled) == 1 and combine == "geometric-mean":
        return upsampled[0]
    # The seed code skips the bias map of the last block: its gradient is constant over space there.
    return combine_maps(upsampled, combine, skip_last=(kind == "bias"))
