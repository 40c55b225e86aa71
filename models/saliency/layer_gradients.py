"""One forward and one cut backward pass that yield activations and upstream gradients of named layers.

Used by NormGrad and Grad-CAM. With the weights frozen (``frozen_for_explanation``) and the earliest hooked
layer's output turned into a leaf (``LayerRecorder``), the single ``torch.autograd.grad`` call computes only
the gradients from the target logits down to that layer: no weight gradients, nothing below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models.saliency.hooks import LayerRecorder
from models.saliency.targets import TargetSpec, check_logits, resolve_targets, target_score

FLOAT16_GRADIENT_SCALE = 1024.0


@dataclass
class LayerGradients:
    names: list[str]
    activations: list[torch.Tensor]  # detached, [B, K, h, w] each, in the model's dtype
    gradients: list[torch.Tensor]  # d(target logit)/d(activation), same shapes (float32 if float16 forward)
    logits: torch.Tensor  # [B, classes], detached
    targets: torch.Tensor  # [B] long


def layer_activations_and_gradients(
    model: nn.Module, images: torch.Tensor, layer_names: Sequence[str], target: TargetSpec
) -> LayerGradients:
    """The caller holds ``frozen_for_explanation(model)``."""
    with LayerRecorder(model, layer_names) as recorder, torch.enable_grad():
        logits = check_logits(model(images))
        recorder.check_unmodified()
        activations = recorder.ordered_outputs()
        targets = resolve_targets(target, logits)
        score = target_score(logits, targets)
        if not score.requires_grad:
            raise RuntimeError(f"the model's output does not depend on layers {recorder.names}")
        # float16 (autocast) gradients of deep layers fall into the subnormal range; a static loss scale keeps
        # them representable, as torch.amp.GradScaler does for training. Undone in float32 below.
        scale = FLOAT16_GRADIENT_SCALE if any(a.dtype == torch.float16 for a in activations) else 1.0
        raw_gradients = torch.autograd.grad(score * scale, activations, allow_unused=True)
    gradients = [torch.zeros_like(a) if g is None else g for a, g in zip(activations, raw_gradients)]
    if scale != 1.0:
        gradients = [g.float() / scale for g in gradients]
    return LayerGradients(
        names=list(recorder.names),
        activations=[a.detach() for a in activations],
        gradients=list(gradients),
        logits=logits.detach(),
        targets=targets,
    )
