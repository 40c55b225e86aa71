"""Classifier architectures NormGate supports, and their explanation layers.

The papers (Ozer et al. 2021, 2023) use ResNet-34/50 and EfficientNet-B0 with a 2-class head trained from
He-initialised weights. Virtual identity layers for NormGrad sit after the convolutional blocks named below;
the combined setting uses all of them, the single setting the last one (docs/algorithms.md, "NormGrad").

Models are always built with ``weights=None``: nothing is downloaded. Users who have ImageNet weights pass
them to ``models.train --pretrained PATH``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

SUPPORTED_ARCHS = ("resnet18", "resnet34", "resnet50", "efficientnet_b0")

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "efficientnet_b0": tvm.efficientnet_b0,
}

_EFFICIENTNET_B0_LAYERS = (
    "features.0.0",
    "features.1.0",
    "features.2.0",
    "features.3.0",
    "features.4.0",
    "features.5.0",
    "features.6.0",
    "features.7.0",
    "features.8.0",
    "features.8.2",
)


# Blocks in ``layer4`` of torchvision's ResNets (He et al. 2016, table 1).
_RESNET_LAYER4_BLOCKS = {"resnet18": 2, "resnet34": 3, "resnet50": 3}


class UnknownArchitectureError(ValueError):
    """Raised for an architecture name NormGate cannot build."""


def _check_arch(arch: str) -> None:
    if arch not in _BUILDERS:
        raise UnknownArchitectureError(f"unknown architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final fully-connected layer (the one re-initialised for a new task)."""
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        return classifier[-1]
    raise UnknownArchitectureError(f"no classifier head found on {type(model).__name__}")


def reset_classifier_head(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """He-initialise the classifier head (the papers' 'semi-random' setting and fresh training)."""
    head = classifier_head(model)
    with torch.no_grad():
        fan_in = head.weight.shape[1]
        std = (2.0 / fan_in) ** 0.5
        head.weight.normal_(0.0, std, generator=generator)
        head.bias.zero_()


def build_model(arch: str, num_classes: int = 2) -> nn.Module:
    """A torchvision classifier with a ``num_classes`` head, He-initialised, no downloaded weights."""
    _check_arch(arch)
    model = _BUILDERS[arch](weights=None)
    head = classifier_head(model)
    new_head = nn.Linear(head.in_features, num_classes)
    if hasattr(model, "fc") and model.fc is head:
        model.fc = new_head
    else:
        classifier = model.classifier
        assert isinstance(classifier, nn.Sequential)  # classifier_head found the head there
        classifier[-1] = new_head
    reset_classifier_head(model)
    return model


def default_normgrad_layers(arch: str) -> list[str]:
    """Module names of the virtual identity layers for the combined setting (docs/algorithms.md, "NormGrad")."""
    _check_arch(arch)
    if arch.startswith("resnet"):
        # A table, not a model build: this runs on every explanation request.
        last_block = _RESNET_LAYER4_BLOCKS[arch] - 1
        return ["layer2.0", "layer3.0", "layer4.0", f"layer4.{last_block}"]
    return list(_EFFICIENTNET_B0_LAYERS)


def default_gradcam_layer(arch: str) -> str:
    """The last convolutional block: Grad-CAM's default layer (docs/algorithms.md, "Baseline saliency methods")."""
    _check_arch(arch)
    return "layer4" if arch.startswith("resnet") else "features.8"


def infer_arch(model: nn.Module) -> str | None:
    """Best-effort architecture name of a torchvision model (used when the caller passes none)."""
    if isinstance(model, tvm.ResNet):
        blocks = tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5))
        bottleneck = isinstance(model.layer1[0], tvm.resnet.Bottleneck)
        table: dict[tuple[tuple[int, ...], bool], str] = {
            ((2, 2, 2, 2), False): "resnet18",
            ((3, 4, 6, 3), False): "resnet34",
            ((3, 4, 6, 3), True): "resnet50",
        }
        return table.get((blocks, bottleneck))
    if isinstance(model, tvm.EfficientNet) and len(model.features) == 9:
        return "efficientnet_b0"
    return None
