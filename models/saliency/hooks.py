"""Context managers that put a model into explanation mode and observe it, and always undo it.

Every hook NormGate attaches lives in one of these context managers; each removes its hooks and restores
``requires_grad``/``training`` in ``finally``, so a model that raises mid-explanation is left as it was
(pattern of captum ``_utils/gradient.py`` and pytorch-grad-cam ``activations_and_gradients.py``).
No module is swapped and no torch function is patched.

Thread safety: hooks live on the model object, so one model must be explained by one thread at a time.
``frozen_for_explanation`` takes a per-model re-entrant lock (a second thread waits), and the recording hooks
ignore forward passes run by any thread other than the one that entered them. The intended use is still
"one worker owns a model" (the service's batching worker).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# A forward hook as nn.Module.register_forward_hook takes it: (module, positional inputs, output) -> new output or None.
ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], torch.Tensor | None]

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


@contextmanager
def frozen_for_explanation(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen weights for the duration; every flag restored afterwards.

    Frozen weights mean autograd records no graph for layers whose inputs need no gradient, and computes no
    weight gradients. Eval mode keeps batch-norm running statistics untouched (an explanation must not
    change the model).
    """
    with _model_lock(model):
        params = list(model.parameters())
        saved_requires_grad = [p.requires_grad for p in params]
        saved_training = [(m, m.training) for m in model.modules()]
        try:
            for p in params:
                p.requires_grad_(False)
            model.eval()
            yield model
        finally:
            for p, flag in zip(params, saved_requires_grad):
                p.requires_grad_(flag)
            for m, flag in saved_training:
                m.training = flag


def resolve_modules(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """(name, module) for each requested module name, or a ValueError naming the unknown ones."""
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))  # de-duplicate, keep order
    if not names:
        raise ValueError("no layers given")
    by_name = dict(model.named_modules())
    unknown = [n for n in names if n not in by_name or n == ""]
    if unknown:
        examples = [n for n in by_name if n and n.count(".") <= 1][:12]
        raise ValueError(f"unknown layer name(s) {unknown}; module names look like {examples}")
    return [(n, by_name[n]) for n in names]


class LayerRecorder:
    """Records the output of named modules and makes the backward graph start at the earliest of them.

    A recorded output that is not yet part of the autograd graph (the first hooked layer, with frozen weights
    and an input that needs no gradient) becomes a detached leaf that requires grad: autograd then stops
    there, so nothing below the earliest hooked layer is differentiated. Outputs of later layers are already
    in that graph. Either way the network continues on a copy of the recorded tensor.

    The hooks act only on forward passes run by the thread that entered the context.
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str]):
        self.modules = resolve_modules(model, layer_names)
        self.names = [n for n, _ in self.modules]
        self.outputs: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._owner: int | None = None

    def _make_hook(self, name: str) -> ForwardHook:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor | None:
            if threading.get_ident() != self._owner:
                return None
            if name in self.outputs:
                raise RuntimeError(
                    f"layer {name!r} ran more than once in one forward pass; hook a layer that runs once"
                )
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                raise TypeError(
                    f"layer {name!r} must output a [B, C, H, W] tensor to be explained, "
                    f"got {type(output).__name__}{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}"
                )
            recorded = output if output.requires_grad else output.detach().requires_grad_(True)
            self.outputs[name] = recorded
            self._versions[name] = recorded._version
            # The network continues on a copy: a later in-place op (a ReLU(inplace=True) after a batch norm)
            # then changes the copy, not the recorded activation, and autograd still delivers the gradient
            # at exactly this point. One activation copy per hooked layer is cheap next to the convolutions.
            return recorded.clone()

        return hook

    def reset(self) -> None:
        self.outputs.clear()
        self._versions.clear()

    def check_unmodified(self) -> None:
        """Raise if a later in-place op overwrote a recorded activation (its value would be wrong)."""
        for name, tensor in self.outputs.items():
            if tensor._version != self._versions[name]:
                raise RuntimeError(
                    f"the output of layer {name!r} is modified in place later in the network, so its "
                    "activation cannot be read; choose the module after that in-place operation"
                )

    def ordered_outputs(self) -> list[torch.Tensor]:
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RuntimeError(f"layer(s) {missing} did not run in the forward pass")
        return [self.outputs[n] for n in self.names]

    def __enter__(self) -> LayerRecorder:
        self._owner = threading.get_ident()
        try:
            for name, module in self.modules:
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self._remove()
        self.reset()


def _guided_relu_gradient(grad: torch.Tensor) -> torch.Tensor:
    # Eq. 5 of Ozer et al. 2023: autograd's ReLU backward supplies (h > 0); we add (g > 0).
    return grad.clamp(min=0)


def _guided_silu_gradient(grad: torch.Tensor) -> torch.Tensor:
    # Eq. 8 of Ozer et al. 2023: autograd's SiLU backward supplies a'(h); we add a'(g) ⊙ g.
    sig = torch.sigmoid(grad)
    return grad * (sig + grad * sig * (1 - sig))


class GuidedActivations:
    """Guided backpropagation through every ``nn.ReLU`` and ``nn.SiLU`` module of a model.

    A forward hook on each activation module attaches a gradient hook to that call's output tensor. The
    gradient hook rewrites the upstream gradient g before autograd's own activation backward multiplies it by
    the activation's derivative, which yields eq. 5 (ReLU) and eq. 8 (SiLU) of Ozer et al. 2023. Tensor hooks
    belong to this forward pass's graph and are freed with it.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._owner: int | None = None
        self.hooked_modules = 0

    def _make_hook(self, rule: Callable[[torch.Tensor], torch.Tensor]) -> ForwardHook:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if threading.get_ident() == self._owner and isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(rule)
            return None

        return hook

    def __enter__(self) -> GuidedActivations:
        self._owner = threading.get_ident()
        try:
            for module in self.model.modules():
                if isinstance(module, nn.ReLU):
                    self._handles.append(module.register_forward_hook(self._make_hook(_guided_relu_gradient)))
                elif isinstance(module, nn.SiLU):
                    self._handles.append(module.register_forward_hook(self._make_hook(_guided_silu_gradient)))
        except BaseException:
            self._remove()
            raise
        self.hooked_modules = len(self._handles)
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self._remove()


class ModelOutputRecorder:
    """Keeps the model's logits for the caller's own images, from whichever forward a method runs on them.

    Methods evaluate the model at the images themselves (NormGrad, Grad-CAM, the gradient family) or at
    least once to pick the predicted class (path and noise methods). Recognising that call by the input's
    storage lets the service take probabilities and heatmap from one forward pass.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor):
        self.model = model
        self._pointer = images.data_ptr()
        self._shape = images.shape
        self.logits: torch.Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._owner: int | None = None

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if (
            self.logits is None
            and threading.get_ident() == self._owner
            and inputs
            and isinstance(inputs[0], torch.Tensor)
            and isinstance(output, torch.Tensor)
            and inputs[0].data_ptr() == self._pointer
            and inputs[0].shape == self._shape
        ):
            self.logits = output.detach().float()
        return None

    def __enter__(self) -> ModelOutputRecorder:
        self._owner = threading.get_ident()
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def upsample_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[B, h, w] → [B, H, W] float32 by bilinear interpolation (docs/algorithms.md, "NormGrad")."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
