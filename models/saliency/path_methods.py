"""Guided Integrated Gradients (ours), Blur IG and XRAI (wrapping Google PAIR's ``saliency`` package v0.2.1).

- Guided IG (Kapishnikov et al., CVPR 2021): an adaptive path from a baseline that moves the
  lowest-gradient fraction of features first. The paper's baseline is black; NormGate's default
  (``baseline="zero"``) is 0 in normalised input space, i.e. the normalisation mean (mid-grey for mean 0.5), and
  ``baseline="black"`` is the image's darkest pixel value (:func:`models.saliency.gradients.path_baseline`). Written here in torch after the paper's algorithm 1 and
  PAIR's reference (whose v0.2.1 calls ``np.quantile(interpolation=)``, gone in NumPy 2), with the model's
  gradient evaluated for the whole batch at each step.
- Blur IG (Xu et al., CVPR 2020): integrates along a path of increasingly Gaussian-blurred images
  (``saliency.core.BlurIG``).
- XRAI (Kapishnikov et al., ICCV 2019): ranks Felzenszwalb over-segmentation regions by the IG attribution
  they hold (``saliency.core.XRAI``). The IG attribution is ours (batched ``integrated_gradients``) with the
  paper's black and white baselines (the image's minimum and maximum), averaged, as PAIR does by default.

These are methods of the Brima & Atemkeng 2023 study. PAIR's implementations work per image on NumPy
[H, W, C] arrays and ask the model for input gradients through a callback; the callback below runs our
frozen model batched over the path points PAIR hands it. Maps are |attribution| summed over channels for the
two IG variants; XRAI's region scores can be negative, so its map is shifted to start at zero per image
(order, and so the argmax, are unchanged).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.saliency.gradients import integrated_gradients, path_baseline
from models.saliency.targets import (
    TargetSpec,
    check_positive_int,
    input_gradients,
    predicted_targets,
    reduce_channels_abs,
)


def _pair() -> ModuleType:
    # PAIR's package pulls in scikit-image (~1 s); import it only when Blur IG or XRAI is asked for.
    return importlib.import_module("saliency.core")


def _gradient_callback(
    model: nn.Module, like: torch.Tensor, target: int
) -> Callable[..., dict[str, npt.NDArray[np.float32]]]:
    """PAIR's call_model_function: NumPy [N, H, W, C] batch → input gradients of the target logit."""

    pair = _pair()

    def call_model(
        x_value_batch: npt.NDArray[Any], call_model_args: object = None, expected_keys: object = None
    ) -> dict[str, npt.NDArray[np.float32]]:
        batch = torch.from_numpy(np.ascontiguousarray(x_value_batch, dtype=np.float32))
        batch = batch.permute(0, 3, 1, 2).to(device=like.device, dtype=like.dtype)
        targets = torch.full((batch.shape[0],), target, dtype=torch.long, device=like.device)
        grads = input_gradients(model, batch, targets)
        return {pair.INPUT_OUTPUT_GRADIENTS: grads.float().permute(0, 2, 3, 1).cpu().numpy()}

    return call_model


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().permute(1, 2, 0).cpu().numpy()


def _guided_ig_image_step(
    x: torch.Tensor,
    x_input: torch.Tensor,
    x_baseline: torch.Tensor,
    grad_actual: torch.Tensor,
    attribution: torch.Tensor,
    step: int,
    steps: int,
    l1_total: float,
    fraction: float,
    max_dist: float,
    max_rounds: int = 1000,
) -> None:
    """Advance one image's Guided IG path by one step, in place (Kapishnikov et al. 2021, algorithm 1)."""
    alpha = (step + 1.0) / steps
    alpha_min, alpha_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    span = x_input - x_baseline
    x_min = x_baseline + span * alpha_min
    x_max = x_baseline + span * alpha_max
    l1_target = l1_total * (1.0 - alpha)
    grad = grad_actual.clone()
    flat_count = grad.numel()
    # np.quantile(..., 'lower') is the element of sorted rank floor(q·(n−1)); kthvalue counts from 1.
    rank = math.floor(fraction * (flat_count - 1)) + 1
    for _ in range(max_rounds):
        x_old = x.clone()
        x_alpha = torch.where(
            span != 0, (x - x_baseline) / torch.where(span != 0, span, 1.0), torch.full_like(x, alpha_max)
        )
        behind = x_alpha < alpha_min  # features that fell more than max_dist behind the straight line
        x[behind] = x_min[behind]
        l1_current = float((x - x_input).abs().sum())
        if math.isclose(l1_target, l1_current, rel_tol=1e-9, abs_tol=1e-9):
            attribution += (x - x_old) * grad_actual
            return
        grad[x == x_max] = math.inf  # features already as far as allowed are not selected again
        magnitude = grad.abs()
        threshold = magnitude.flatten().kthvalue(rank).values
        selected = (magnitude <= threshold) & (grad != math.inf)
        l1_selected = float(((x - x_max).abs() * selected).sum())
        gamma = (l1_current - l1_target) / l1_selected if l1_selected > 0 else math.inf
        if gamma > 1.0:
            x[selected] = x_max[selected]
        else:
            x[selected] = (x + (x_max - x) * gamma)[selected]
        attribution += (x - x_old) * grad_actual
        if gamma <= 1.0:
            return


def guided_ig_attribution(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 32,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    max_batch: int = 32,
    baseline: str | float = "zero",
) -> torch.Tensor:
    """Guided IG [B, C, H, W] from ``baseline`` (:func:`path_baseline`); one batched gradient call per path step.

    At each step the fraction of features with the smallest |gradient| moves towards the input until the
    path has covered (step+1)/steps of the L1 distance; no feature strays more than ``max_dist`` (as a
    fraction of the path) from the straight line. ``max_dist=0`` gives IG with the right Riemann sum.
    """
    steps = check_positive_int("steps", steps)
    max_batch = check_positive_int("max_batch", max_batch)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not 0.0 <= max_dist <= 1.0:
        raise ValueError(f"max_dist must be in [0, 1], got {max_dist!r}")
    # float64 path bookkeeping as in the reference: the L1 targets are compared to 1e-9.
    x_input = images.detach().double()
    x_baseline = path_baseline(images.detach(), baseline).double().expand_as(x_input).clone()
    x = x_baseline.clone()
    l1_totals = (x_input - x_baseline).abs().flatten(1).sum(1).tolist()
    attribution = torch.zeros_like(x_input)
    for step in range(steps):
        grads = torch.cat(
            [
                input_gradients(model, x[i : i + max_batch].to(images.dtype), targets[i : i + max_batch])
                for i in range(0, x.shape[0], max_batch)
            ]
        ).double()
        for b, l1_total in enumerate(l1_totals):
            if l1_total == 0:
                continue
            _guided_ig_image_step(
                x[b], x_input[b], x_baseline[b], grads[b], attribution[b], step, steps, l1_total, fraction, max_dist
            )
    return attribution.float()


def guided_ig_map(
    model: nn.Module,
    images: torch.Tensor,
    target: TargetSpec,
    steps: int = 32,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    max_batch: int = 32,
    baseline: str | float = "zero",
) -> torch.Tensor:
    targets = predicted_targets(model, images, target)
    attribution = guided_ig_attribution(model, images, targets, steps, fraction, max_dist, max_batch, baseline)
    return reduce_channels_abs(attribution)


def blur_ig_map(
    model: nn.Module,
    images: torch.Tensor,
    target: TargetSpec,
    steps: int = 32,
    max_sigma: float = 50.0,
    max_batch: int = 32,
) -> torch.Tensor:
    steps = check_positive_int("steps", steps)
    max_batch = check_positive_int("max_batch", max_batch)
    targets = predicted_targets(model, images, target)
    method = _pair().BlurIG()
    maps = []
    for image, t in zip(images, targets.tolist()):
        x = _to_hwc(image)
        attribution = method.GetMask(
            x, _gradient_callback(model, images, t), max_sigma=max_sigma, steps=steps, batch_size=max_batch
        )
        maps.append(torch.from_numpy(np.asarray(attribution, dtype=np.float32)).permute(2, 0, 1))
    return reduce_channels_abs(torch.stack(maps)).to(images.device)


def xrai_map(
    model: nn.Module, images: torch.Tensor, target: TargetSpec, steps: int = 32, max_batch: int = 32
) -> torch.Tensor:
    targets = predicted_targets(model, images, target)
    x = images.float()
    low = x.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(x)
    high = x.flatten(1).amax(1).view(-1, 1, 1, 1).expand_as(x)
    attribution = 0.5 * (
        integrated_gradients(model, images, targets, low, steps, max_batch)
        + integrated_gradients(model, images, targets, high, steps, max_batch)
    )
    method = _pair().XRAI()
    maps = []
    for image, attr in zip(images, attribution):
        region_scores = method.GetMask(_to_hwc(image), call_model_function=None, base_attribution=_to_hwc(attr))
        region_scores = torch.from_numpy(np.asarray(region_scores, dtype=np.float32))
        maps.append(region_scores - region_scores.min())
    return torch.stack(maps).to(images.device)
