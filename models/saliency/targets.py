"""Input checks, target classes, and input-space gradients shared by the saliency methods.

Every image of a batch is explained independently: the backward pass starts from the sum over the batch of
each image's own target logit, and in eval mode no image's logit depends on another image.
"""

from __future__ import annotations

import torch
from torch import nn

TargetSpec = int | torch.Tensor | None


def check_images(images: object) -> torch.Tensor:
    """A normalised float batch [B, C, H, W] with finite values, detached from any caller graph."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a normalised float tensor, got dtype {images.dtype}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    return images.detach()


def resolve_targets(target: TargetSpec, logits: torch.Tensor) -> torch.Tensor:
    """Target class per image as a [B] long tensor on the logits' device; default the predicted class."""
    batch, num_classes = logits.shape[0], logits.shape[-1]
    if target is None:
        return logits.detach().argmax(dim=-1)
    if isinstance(target, bool):
        raise TypeError("target must be a class index or a [B] tensor of class indices")
    if isinstance(target, int):
        targets = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target tensor must hold integer class indices, got dtype {target.dtype}")
        if target.dim() == 0:
            targets = target.to(logits.device, torch.long).expand(batch).clone()
        elif target.shape == (batch,):
            targets = target.to(logits.device, torch.long)
        else:
            raise ValueError(f"target tensor must have shape [{batch}], got {tuple(target.shape)}")
    else:
        raise TypeError(f"target must be None, an int or a tensor, got {type(target).__name__}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(f"target class out of range: the model has {num_classes} classes")
    return targets


def check_positive_int(name: str, value: object) -> int:
    """A method option that counts something (steps, samples, batch size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_logits(logits: object) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"the model must return logits of shape [B, classes], got {shape}")
    return logits


def target_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each image's target logit (float32 even under autocast)."""
    return logits.float().gather(1, targets[:, None]).sum()


def predicted_targets(model: nn.Module, images: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    """Targets for methods that evaluate the model away from the image (paths, noise): one plain forward."""
    with torch.no_grad():
        logits = check_logits(model(images))
    return resolve_targets(target, logits)


def input_gradients(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d(target logit)/d(input) for a batch, one forward and one backward, weights frozen by the caller."""
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = check_logits(model(inputs))
        (grad,) = torch.autograd.grad(target_score(logits, targets), inputs)
    return grad


def reduce_channels_abs(attribution: torch.Tensor) -> torch.Tensor:
    """Pixel-space methods: [B, C, H, W] → [B, H, W] by summing absolute values over channels (docs/algorithms.md)."""
    return attribution.float().abs().sum(dim=1)
