"""Method registry and the ``explain`` entry point (docs/saliency.md).

A method is registered under its public id (what GET /methods lists) with the function that computes it, the
way it picks layers, and the keyword options it accepts. ``explain`` validates the input, resolves layers,
freezes the model, runs the method and checks the result; methods themselves only compute.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.architectures import default_gradcam_layer, default_normgrad_layers, infer_arch
from models.saliency import gradients, normgrad, path_methods
from models.saliency.hooks import ModelOutputRecorder, frozen_for_explanation, resolve_modules
from models.saliency.layer_gradients import layer_activations_and_gradients
from models.saliency.targets import TargetSpec, check_images

DEFAULT_METHOD = "normgrad-conv1x1-combined"

# How a method uses ``layers``: all NormGrad layers, the last NormGrad layer, the Grad-CAM layer, or none.
LAYERS_COMBINED, LAYERS_SINGLE, LAYERS_GRADCAM, LAYERS_NONE = "combined", "single", "gradcam", "none"


@dataclass(frozen=True)
class SaliencyMethod:
    method_id: str
    compute: Callable[..., torch.Tensor]  # (model, images, target, [layers], **options) -> [B, H, W]
    layer_use: str
    options: tuple[str, ...]  # keyword options the caller may pass through ``explain``
    summary: str

    @property
    def uses_normgrad_layers(self) -> bool:
        """Whether the method reads a checkpoint's NormGrad layers (all of them, or the last one)."""
        return self.layer_use in (LAYERS_COMBINED, LAYERS_SINGLE)


_REGISTRY: dict[str, SaliencyMethod] = {}


def register_method(
    method_id: str,
    compute: Callable[..., torch.Tensor],
    layer_use: str,
    summary: str,
    options: Sequence[str] | None = None,
) -> SaliencyMethod:
    """Add a method; its options default to the keyword parameters of ``compute`` after the fixed ones."""
    if method_id in _REGISTRY:
        raise ValueError(f"saliency method {method_id!r} is already registered")
    if layer_use not in (LAYERS_COMBINED, LAYERS_SINGLE, LAYERS_GRADCAM, LAYERS_NONE):
        raise ValueError(f"unknown layer use {layer_use!r}")
    if options is None:
        fixed = {"model", "images", "target", "layers", "layer"}
        options = [p for p in inspect.signature(compute).parameters if p not in fixed]
    method = SaliencyMethod(method_id, compute, layer_use, tuple(options), summary)
    _REGISTRY[method_id] = method
    return method


def list_methods() -> list[str]:
    """Registered method ids, in registration order (the order docs/saliency.md and GET /methods list them)."""
    return list(_REGISTRY)


def get_method(method_id: str) -> SaliencyMethod:
    try:
        return _REGISTRY[method_id]
    except (KeyError, TypeError):
        raise ValueError(f"unknown saliency method {method_id!r}; choose one of {', '.join(_REGISTRY)}") from None


def default_layers(model: nn.Module) -> list[str]:
    """The architecture's NormGrad layers (docs/algorithms.md, "NormGrad"), for torchvision models NormGate knows."""
    arch = infer_arch(model)
    if arch is None:
        raise ValueError(f"no default layers for a {type(model).__name__}; pass layers=[module names]")
    return default_normgrad_layers(arch)


def _layers_for(method: SaliencyMethod, model: nn.Module, layers: Sequence[str] | str | None) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    if layers is not None:
        layers = list(layers)
        if not layers or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"layers must be a non-empty list of module names, got {layers!r}")
    if method.layer_use == LAYERS_GRADCAM:
        if layers:
            return [layers[-1]]
        arch = infer_arch(model)
        if arch is None:
            raise ValueError(f"no default Grad-CAM layer for a {type(model).__name__}; pass layers=[name]")
        return [default_gradcam_layer(arch)]
    chosen = layers if layers else default_layers(model)
    return [chosen[-1]] if method.layer_use == LAYERS_SINGLE else chosen


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = DEFAULT_METHOD,
    target: TargetSpec = None,
    layers: Sequence[str] | str | None = None,
    **options: Any,
) -> torch.Tensor:
    """Saliency maps [B, H, W] (float32, ≥ 0, input resolution) for a normalised batch [B, 3, H, W].

    ``target``: a class index or a [B] tensor; default the predicted class. ``layers``: module names; NormGrad
    ``-combined`` uses all, ``-single`` the last, Grad-CAM the last (default ``layer4``/``features.8``);
    pixel-space methods take no layers and ignore them. ``options``: method settings, e.g.
    ``combine="minmax-product"`` for NormGrad, ``steps`` for the IG family, ``samples`` for SmoothGrad.
    The forward runs in the caller's autocast context, if any. The model is left exactly as it was
    (weights, ``requires_grad``, ``training``, hooks); one thread at a time per model.
    """
    maps, _ = explain_with_logits(model, images, method, target, layers, **options)
    return maps


def explain_with_logits(
    model: nn.Module,
    images: torch.Tensor,
    method: str = DEFAULT_METHOD,
    target: TargetSpec = None,
    layers: Sequence[str] | str | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``explain`` plus the model's logits for ``images`` [B, classes] (float32), from the same forward pass
    where the method runs one at the images (all built-in methods do), so callers need no second forward."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    spec = get_method(method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"method {method!r} does not take option(s) {unknown}; it takes {list(spec.options) or 'none'}"
        )
    images = check_images(images)
    if spec.layer_use == LAYERS_NONE:
        call_args: dict[str, str | list[str]] = {}
    else:
        chosen = _layers_for(spec, model, layers)
        resolve_modules(model, chosen)  # unknown names fail here, before any work
        call_args = {"layer": chosen[0]} if spec.layer_use == LAYERS_GRADCAM else {"layers": chosen}
    with frozen_for_explanation(model):
        with ModelOutputRecorder(model, images) as output_recorder:
            maps = spec.compute(model, images, target, **call_args, **options)
        logits = output_recorder.logits
        if logits is None:  # a registered method that never evaluated the images themselves
            with torch.no_grad():
                logits = model(images).detach().float()
    return _checked_maps(maps, images, method), logits


def explain_many(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str],
    target: TargetSpec = None,
    layers: Sequence[str] | str | None = None,
    combine: str = "geometric-mean",
) -> dict[str, torch.Tensor]:
    """Several methods on one batch: {method id: maps}, each equal to what ``explain`` gives for it.

    All NormGrad variants share ONE forward + backward through ``layers`` (default the architecture's; the
    ``-single`` variants use the last of them) and take ``combine``; Guided Grad-CAM is the product of
    Grad-CAM and guided backprop when both are requested; other methods run ``explain`` with their defaults.
    """
    methods = list(dict.fromkeys([methods] if isinstance(methods, str) else methods))
    for method_id in methods:
        get_method(method_id)
    if combine not in normgrad.COMBINE_MODES:
        raise ValueError(f"unknown combine mode {combine!r}; choose one of {normgrad.COMBINE_MODES}")
    images = check_images(images)
    out: dict[str, torch.Tensor] = {}
    normgrad_ids = [m for m in methods if m in _NORMGRAD_VARIANTS]
    if normgrad_ids:
        # The combined layer list serves every variant; -single reads its last layer.
        chosen = _layers_for(get_method("normgrad-conv1x1-combined"), model, layers)
        resolve_modules(model, chosen)
        with frozen_for_explanation(model):
            recorded = layer_activations_and_gradients(model, images, chosen, target)
        for method_id in normgrad_ids:
            kind, layer_use = _NORMGRAD_VARIANTS[method_id]
            acts, grads = recorded.activations, recorded.gradients
            if layer_use == LAYERS_SINGLE:
                acts, grads = acts[-1:], grads[-1:]
            maps = normgrad.normgrad_maps(kind, acts, grads, images.shape[-2:], combine)
            out[method_id] = _checked_maps(maps, images, method_id)
    for method_id in methods:
        if method_id in out or method_id == "guided-gradcam":
            continue
        out[method_id] = explain(model, images, method_id, target=target)
    if "guided-gradcam" in methods:
        if "gradcam" in out and "guided-backprop" in out:
            out["guided-gradcam"] = out["gradcam"] * out["guided-backprop"]
        else:
            out["guided-gradcam"] = explain(model, images, "guided-gradcam", target=target)
    return {m: out[m] for m in methods}


def _checked_maps(maps: torch.Tensor, images: torch.Tensor, method: str) -> torch.Tensor:
    expected = (images.shape[0], images.shape[2], images.shape[3])
    if tuple(maps.shape) != expected:
        raise RuntimeError(f"{method} produced maps of shape {tuple(maps.shape)}, expected {expected}")
    maps = maps.detach().to(torch.float32).contiguous()
    if not torch.isfinite(maps).all():
        raise FloatingPointError(
            f"{method} produced non-finite values (the model's activations or gradients overflowed); "
            "try float32 instead of autocast"
        )
    return maps


def _normgrad_method(kind: str) -> Callable[..., torch.Tensor]:
    def compute(
        model: nn.Module,
        images: torch.Tensor,
        target: TargetSpec,
        layers: Sequence[str],
        combine: str = "geometric-mean",
    ) -> torch.Tensor:
        if combine not in normgrad.COMBINE_MODES:
            raise ValueError(f"unknown combine mode {combine!r}; choose one of {normgrad.COMBINE_MODES}")
        recorded = layer_activations_and_gradients(model, images, layers, target)
        return normgrad.normgrad_maps(kind, recorded.activations, recorded.gradients, images.shape[-2:], combine)

    compute.__name__ = f"normgrad_{kind}"
    return compute


# NormGrad method id → (virtual layer type, layer use); lets explain_many share one pass among them.
_NORMGRAD_VARIANTS: dict[str, tuple[str, str]] = {}

for _kind in normgrad.LAYER_KINDS:
    _compute = _normgrad_method(_kind)
    register_method(
        f"normgrad-{_kind}-single",
        _compute,
        LAYERS_SINGLE,
        f"NormGrad, {_kind} virtual identity layer after the last hooked block",
    )
    register_method(
        f"normgrad-{_kind}-combined",
        _compute,
        LAYERS_COMBINED,
        f"NormGrad, {_kind} virtual identity layers, geometric mean over the hooked blocks",
    )
    _NORMGRAD_VARIANTS[f"normgrad-{_kind}-single"] = (_kind, LAYERS_SINGLE)
    _NORMGRAD_VARIANTS[f"normgrad-{_kind}-combined"] = (_kind, LAYERS_COMBINED)

register_method(
    "gradcam", gradients.gradcam_map, LAYERS_GRADCAM, "Grad-CAM (Selvaraju et al. 2017); postprocess='seed' option"
)
register_method("guided-gradcam", gradients.guided_gradcam_map, LAYERS_GRADCAM, "Grad-CAM ⊙ guided backprop")
register_method(
    "guided-backprop",
    gradients.guided_backprop_map,
    LAYERS_NONE,
    "Guided backpropagation, ReLU and SiLU (Ozer et al. 2023 eqs. 5, 8); postprocess='seed' option",
)
register_method("input-x-grad", gradients.input_x_gradient_map, LAYERS_NONE, "Input × gradient")
register_method("gradient", gradients.gradient_map, LAYERS_NONE, "Plain input gradient")
register_method("smoothgrad", gradients.smoothgrad_map, LAYERS_NONE, "SmoothGrad (Smilkov et al. 2017)")
register_method(
    "integrated-gradients",
    gradients.integrated_gradients_map,
    LAYERS_NONE,
    "Integrated Gradients, trapezoid rule; baseline 'zero' (normalised 0 = mid-grey) or 'black' (darkest pixel)",
)
register_method(
    "guided-ig",
    path_methods.guided_ig_map,
    LAYERS_NONE,
    "Guided IG (PAIR saliency); baseline 'zero' (normalised 0 = mid-grey) or 'black' (darkest pixel)",
)
register_method("blur-ig", path_methods.blur_ig_map, LAYERS_NONE, "Blur IG (PAIR saliency)")
register_method("xrai", path_methods.xrai_map, LAYERS_NONE, "XRAI regions over IG (PAIR saliency)")
