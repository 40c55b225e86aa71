"""Gradient-based baselines: plain gradient, Input×Grad, Guided Backpropagation, Grad-CAM, Guided Grad-CAM,
SmoothGrad and Integrated Gradients. All batched over images; all with frozen weights.

- Gradient (Simonyan et al. 2014): |∂y_c/∂x| summed over channels.
- Input×Grad (Shrikumar et al. 2016; Ozer et al. 2023 eq. 2): |x ⊙ ∂y_c/∂x| summed over channels.
- Guided Backpropagation (Springenberg et al. 2015): eq. 5 (ReLU) and eq. 8 (SiLU) of Ozer et al. 2023,
  via ``GuidedActivations``; |gradient| summed over channels.
- Grad-CAM (Selvaraju et al. 2017; Ozer et al. 2023 eqs. 9–12): ReLU(Σ_k mean_u(g_k) x_k), upsampled
  bilinearly. Default layer: the last convolutional block.
- Guided Grad-CAM (eq. 13): Grad-CAM ⊙ Guided Backpropagation.
- SmoothGrad (Smilkov et al. 2017): mean gradient over n noisy copies, noise σ = level·(max − min) per image.
- Integrated Gradients (Sundararajan et al. 2017): (x − x̄) ⊙ ∫₀¹ ∂y_c/∂x(x̄ + α(x − x̄)) dα with the
  trapezoid rule on ``steps`` equally spaced α (defaults: baseline ``"zero"``, 32 steps; docs/algorithms.md).
  The weights sum to 1 (completeness); captum's ``riemann_trapezoid`` uses 1/n steps, i.e. (n−1)/n of this map.
  Baselines (:func:`path_baseline`): ``"zero"`` is 0 in the model's *normalised* input space, i.e. the
  normalisation mean — mid-grey for NormGate's mean 0.5, not black; ``"black"`` is the darkest pixel value of
  the image (its minimum over pixels and channels, the black baseline XRAI and PAIR use); a number is a constant
  in normalised space.

``postprocess="seed"`` (Grad-CAM, guided backprop) applies the papers' seed code's post-processing
(:mod:`models.saliency.postprocess`).

The IG path and SmoothGrad samples are evaluated ``max_batch`` inputs at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from models.saliency.hooks import GuidedActivations, upsample_maps
from models.saliency.layer_gradients import layer_activations_and_gradients
from models.saliency.postprocess import check_postprocess, seed_gradcam_upsample, seed_guided_backprop_map
from models.saliency.targets import (
    TargetSpec,
    check_logits,
    check_positive_int,
    input_gradients,
    predicted_targets,
    reduce_channels_abs,
    resolve_targets,
    target_score,
)


def _forward_backward_to_input(
    model: nn.Module, images: torch.Tensor, target: TargetSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient wrt the images, targets) with one forward and one backward."""
    inputs = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = check_logits(model(inputs))
        targets = resolve_targets(target, logits)
        (grad,) = torch.autograd.grad(target_score(logits, targets), inputs)
    return grad, targets


def gradient_map(model: nn.Module, images: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    grad, _ = _forward_backward_to_input(model, images, target)
    return reduce_channels_abs(grad)


def input_x_gradient_map(model: nn.Module, images: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    grad, _ = _forward_backward_to_input(model, images, target)
    return reduce_channels_abs(images.float() * grad.float())


def guided_backprop_gradient(model: nn.Module, images: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    """The guided gradient wrt the images, [B, C, H, W]."""
    with GuidedActivations(model) as guided:
        if guided.hooked_modules == 0:
            raise ValueError("guided backpropagation needs nn.ReLU or nn.SiLU modules; the model has none")
        grad, _ = _forward_backward_to_input(model, images, target)
    return grad


def guided_backprop_map(
    model: nn.Module, images: torch.Tensor, target: TargetSpec, postprocess: str = "none"
) -> torch.Tensor:
    gradient = guided_backprop_gradient(model, images, target)
    if check_postprocess(postprocess) == "seed":
        return seed_guided_backprop_map(gradient)
    return reduce_channels_abs(gradient)


def gradcam_map(
    model: nn.Module, images: torch.Tensor, target: TargetSpec, layer: str, postprocess: str = "none"
) -> torch.Tensor:
    check_postprocess(postprocess)
    recorded = layer_activations_and_gradients(model, images, [layer], target)
    x = recorded.activations[0].float()
    g = recorded.gradients[0].float()
    weights = g.mean(dim=(2, 3), keepdim=True)  # α_k, eq. 9
    cam = (weights * x).sum(dim=1).clamp_min(0)  # eqs. 10–11
    if postprocess == "seed":
        return seed_gradcam_upsample(cam, images.shape[-2:])
    return upsample_maps(cam, images.shape[-2:])


def guided_gradcam_map(model: nn.Module, images: torch.Tensor, target: TargetSpec, layer: str) -> torch.Tensor:
    # Resolve the target once so that both passes explain the same class.
    targets = predicted_targets(model, images, target)
    cam = gradcam_map(model, images, targets, layer)
    guided = reduce_channels_abs(guided_backprop_gradient(model, images, targets))
    return cam * guided


def smoothgrad_map(
    model: nn.Module,
    images: torch.Tensor,
    target: TargetSpec,
    samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    max_batch: int = 32,
) -> torch.Tensor:
    samples = check_positive_int("samples", samples)
    max_batch = check_positive_int("max_batch", max_batch)
    if not (isinstance(noise_level, (int, float)) and noise_level >= 0):
        raise ValueError(f"noise_level must be a non-negative number, got {noise_level!r}")
    targets = predicted_targets(model, images, target)
    batch = images.shape[0]
    spread = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).float()
    sigma = (noise_level * spread).view(batch, 1, 1, 1)
    # A fixed CPU generator: same input ⇒ same map on every device. Every image of the batch gets the same
    # unit-noise draws (scaled by its own σ), so an image's map does not depend on its batch neighbours.
    generator = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(images.shape, dtype=torch.float32, device=images.device)
    per_chunk = max(1, max_batch // batch)
    done = 0
    while done < samples:
        k = min(per_chunk, samples - done)
        unit_noise = torch.randn((k, 1, *tuple(images.shape[1:])), generator=generator).to(images.device)
        noisy = (images.float()[None] + unit_noise * sigma[None]).to(images.dtype).flatten(0, 1)
        grads = input_gradients(model, noisy, targets.repeat(k))
        total += grads.float().view((k, *tuple(images.shape))).sum(0)
        done += k
    return reduce_channels_abs(total / samples)


def trapezoid_alphas_and_weights(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points α_i = i/(n−1) and trapezoid weights (half weight at both ends) on [0, 1]."""
    steps = check_positive_int("steps", steps)
    if steps < 2:
        raise ValueError("the trapezoid rule needs steps >= 2")
    alphas = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
    weights[0] = weights[-1] = 0.5 / (steps - 1)
    return alphas, weights


PATH_BASELINES = ("zero", "black")


def path_baseline(images: torch.Tensor, baseline: str | float) -> torch.Tensor:
    """The baseline x̄ of a path method as a tensor broadcastable to ``images`` [B, C, H, W] (float32).

    ``"zero"``: 0 in normalised space = the normalisation mean (mid-grey for mean 0.5). ``"black"``: each
    image's darkest value (minimum over channels and pixels), i.e. the darkest pixel. A number: that constant.
    """
    x = images.float()
    if isinstance(baseline, str):
        if baseline == "zero":
            return torch.zeros((), dtype=torch.float32, device=images.device)
        if baseline == "black":
            return x.flatten(1).amin(1).view(-1, 1, 1, 1)
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(PATH_BASELINES)} or a number")
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ValueError(f"baseline must be one of {', '.join(PATH_BASELINES)} or a number, got {baseline!r}")
    return torch.tensor(float(baseline), dtype=torch.float32, device=images.device)


def integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    baseline: torch.Tensor | float = 0.0,
    steps: int = 32,
    max_batch: int = 32,
) -> torch.Tensor:
    """The IG attribution [B, C, H, W] (float32) for given targets."""
    max_batch = check_positive_int("max_batch", max_batch)
    alphas, weights = trapezoid_alphas_and_weights(steps)
    x = images.float()
    base = torch.as_tensor(baseline, dtype=torch.float32, device=images.device).expand_as(x)
    delta = x - base
    batch = images.shape[0]
    total = torch.zeros_like(x)
    per_chunk = max(1, max_batch // batch)
    for start in range(0, steps, per_chunk):
        a = alphas[start : start + per_chunk].to(device=images.device, dtype=torch.float32)
        w = weights[start : start + per_chunk].to(device=images.device, dtype=torch.float32)
        k = a.numel()
        path = (base[None] + a.view(k, 1, 1, 1, 1) * delta[None]).to(images.dtype).flatten(0, 1)
        grads = input_gradients(model, path, targets.repeat(k)).float().view((k, *tuple(x.shape)))
        total += (w.view(k, 1, 1, 1, 1) * grads).sum(0)
    return delta * total


def integrated_gradients_map(
    model: nn.Module,
    images: torch.Tensor,
    target: TargetSpec,
    steps: int = 32,
    baseline: str | float = "zero",
    max_batch: int = 32,
) -> torch.Tensor:
    base = path_baseline(images, baseline)
    targets = predicted_targets(model, images, target)
    return reduce_channels_abs(integrated_gradients(model, images, targets, base, steps, max_batch))
