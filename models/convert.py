"""Plain torchvision ``state_dict`` files → NormGate checkpoint folders (docs/formats.md, "Checkpoint folders"), and
the safe reader for them.

A ``.pth`` is a pickle. It is only ever opened with ``torch.load(..., weights_only=True)``, which restores
tensors and plain containers and refuses any other pickled object (a whole pickled model, an optimizer, a
custom class, or a file crafted to run code). ``.safetensors`` files are read with safetensors.

The same reader serves ``models.train --pretrained PATH`` (a user's ImageNet weights; the head is replaced,
as in Ozer et al. 2021 §3 and 2023 §4.1) and this converter (an already-trained 2-class classifier, e.g. one
trained with the seed code canerozer/explainable-iqa, saved as ``torch.save(model.state_dict(), path)``).

CLI::

    python -m models.convert --weights model.pth [--arch resnet34] --out models/checkpoints/mine \
        [--name mine --version 1 --input-size 600 --mean .. --std .. --threshold 0.5 --fp16-weights]
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from models.architectures import SUPPORTED_ARCHS, build_model, classifier_head, default_normgrad_layers
from models.checkpoint import CheckpointError, load_matching_state, save_checkpoint
from models.metadata import ModelMetadata, TrainingRecord

# ImageNet statistics: the right normalisation for weights trained on ImageNet with torchvision's transforms.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Wrappers people commonly save around a state_dict ({"state_dict": sd}, {"model": sd}, Lightning's, …).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.pth``/``.pt`` (weights_only) or ``.safetensors`` file.

    Strips a ``module.`` prefix (DataParallel) and unwraps one level of ``{"state_dict": …}``-style dicts.
    Raises :class:`CheckpointError` with a sentence naming the file for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # weights_only refuses any global that is not a tensor/container: nothing was executed.
            raise CheckpointError(
                f"{path}: refused to unpickle it: the file holds objects other than tensors "
                f"(e.g. a whole pickled model). Save model.state_dict() instead. Detail: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable PyTorch weights file ({exc})") from None
    if isinstance(state, dict):
        for key in _WRAPPER_KEYS:
            inner = state.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {not_tensors[:5]}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _head_prefix(model: nn.Module) -> str:
    head = classifier_head(model)
    head_name: str = next(name for name, module in model.named_modules() if module is head)
    return head_name + "."


def infer_arch_from_state(state: dict[str, torch.Tensor]) -> str:
    """The supported architecture whose body (head aside) has exactly these tensor names and shapes."""
    for arch in SUPPORTED_ARCHS:
        model = build_model(arch)
        prefix = _head_prefix(model)
        expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(prefix)}
        body = {k: v.shape for k, v in state.items() if not k.startswith(prefix)}
        if expected == body:
            return arch
    raise CheckpointError(f"the weights match none of the supported architectures ({', '.join(SUPPORTED_ARCHS)})")


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Copy every tensor except the classifier head into ``model`` (the head stays as initialised).

    Used for ``--pretrained``: the user's weights may carry a 1000-class ImageNet head, which is dropped.
    """
    load_matching_state(model, state, source, arch, exclude_prefix=_head_prefix(model))


def convert(
    weights: str | Path,
    out: str | Path,
    *,
    arch: str | None = None,
    name: str = "converted",
    version: str = "1",
    input_size: int | Sequence[int] = 320,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] = ("no_foreign_object", "foreign_object"),
    positive_class: str = "foreign_object",
    threshold: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a checkpoint folder from a trained 2-class torchvision state_dict; returns the folder."""
    state = read_state_dict(weights)
    if arch is None:
        arch = infer_arch_from_state(state)
    if arch not in SUPPORTED_ARCHS:
        raise CheckpointError(f"unknown arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    model = build_model(arch, num_classes=len(classes))
    head_weight = _head_prefix(model) + "weight"
    if head_weight in state and state[head_weight].shape[0] != len(classes):
        raise CheckpointError(
            f"{weights}: the classifier head has {state[head_weight].shape[0]} outputs, a NormGate checkpoint has "
            f"{len(classes)} ({', '.join(classes)}). For ImageNet weights, fine-tune instead: "
            f"python -m models.train --pretrained {weights} …"
        )
    load_matching_state(model, state, str(weights), arch)
    size = [input_size, input_size] if isinstance(input_size, int) else [int(s) for s in input_size]
    meta = ModelMetadata(
        name=name,
        version=version,
        arch=arch,
        input_size=size,
        mean=list(mean) if mean is not None else list(IMAGENET_MEAN),
        std=list(std) if std is not None else list(IMAGENET_STD),
        classes=list(classes),
        positive_class=positive_class,
        threshold=float(threshold),
        normgrad_layers=default_normgrad_layers(arch),
        trained_on=TrainingRecord(notes=f"converted from {Path(weights).name} by python -m models.convert"),
        metrics={},
    )
    return save_checkpoint(model, meta, out, dtype=dtype)


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.convert",
        description="Convert a trained 2-class torchvision state_dict (.pth via weights_only, or .safetensors) "
        "into a NormGate checkpoint folder (model.safetensors + model.json).",
    )
    p.add_argument(
        "--weights", required=True, help="state_dict file: .pth/.pt (torch.save(model.state_dict())) or .safetensors"
    )
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--arch", choices=SUPPORTED_ARCHS, help="architecture (default: inferred from the tensors)")
    p.add_argument("--name", default="converted")
    p.add_argument("--version", default="1")
    p.add_argument("--input-size", type=int, default=320, help="model input grid (square), e.g. 600 for the papers")
    p.add_argument("--mean", type=_floats, default=None, help="normalisation mean (default ImageNet's)")
    p.add_argument("--std", type=_floats, default=None, help="normalisation std (default ImageNet's)")
    p.add_argument("--classes", default="no_foreign_object,foreign_object", help="the two class names in output order")
    p.add_argument("--positive-class", default="foreign_object")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--fp16-weights", action="store_true", help="store float tensors as float16 (half the size)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        folder = convert(
            args.weights,
            args.out,
            arch=args.arch,
            name=args.name,
            version=args.version,
            input_size=args.input_size,
            mean=args.mean,
            std=args.std,
            classes=[c.strip() for c in args.classes.split(",")],
            positive_class=args.positive_class,
            threshold=args.threshold,
            dtype=torch.float16 if args.fp16_weights else torch.float32,
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
