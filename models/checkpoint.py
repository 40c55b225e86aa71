"""Checkpoint folders: ``model.safetensors`` (weights) + ``model.json`` (metadata, :mod:`models.metadata`), and
``ood.safetensors`` (out-of-distribution statistics, :mod:`models.ood`) when ``model.json`` has an ``ood`` block.

Weights are only ever read with safetensors (no pickle). Metadata is validated against the architecture
before the weights are loaded so that a mismatched or corrupt folder fails with a sentence that names the
file and the problem, not a stack trace from ``load_state_dict``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from models.architectures import build_model
from models.metadata import MetadataError, ModelMetadata

if TYPE_CHECKING:
    from models.ood import MahalanobisStatistics

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, corrupt or does not match its architecture."""


@dataclass
class Checkpoint:
    model: nn.Module
    meta: ModelMetadata
    path: Path | None = None
    # The out-of-distribution statistics the ood block of model.json names (models.ood), or None.
    ood: MahalanobisStatistics | None = None


def read_metadata(folder: Path) -> ModelMetadata:
    """The validated ``model.json`` of a checkpoint folder, or a :class:`CheckpointError` naming file and field."""
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: no such file (a checkpoint folder needs {META_FILE})")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    try:
        return ModelMetadata.from_dict(data, source=str(meta_path))
    except MetadataError as exc:
        raise CheckpointError(str(exc)) from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder; the model comes back in eval mode, float32, on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    meta = read_metadata(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: no such file (a checkpoint folder needs {WEIGHTS_FILE})")
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from exc

    model = build_model(meta.arch, num_classes=len(meta.classes))
    load_matching_state(model, state, str(weights_path), meta.arch)
    model.to(device=device, dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # The layers the explanation engine hooks must exist in this architecture.
    names = dict(model.named_modules())
    unknown = [n for n in meta.normgrad_layers if n not in names]
    if unknown:
        raise CheckpointError(f"{folder / META_FILE}: normgrad_layers not in {meta.arch}: {unknown}")
    # Imported here: ``python -m models.ood`` must not find itself imported by the package (runpy warns).
    from models.ood import OodError, load_ood

    try:
        ood = load_ood(folder, meta)
    except OodError as exc:
        raise CheckpointError(str(exc)) from None
    if ood is not None and meta.ood is not None and meta.ood.layer not in names:
        raise CheckpointError(f"{folder / META_FILE}: ood.layer {meta.ood.layer!r} is not a module of {meta.arch}")
    return Checkpoint(model=model, meta=meta, path=folder, ood=ood)


def load_matching_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str, exclude_prefix: str | None = None
) -> None:
    """Copy ``state`` into ``model`` after checking tensor names and shapes, with errors naming ``source``.

    ``exclude_prefix`` leaves those tensors out on both sides (the classifier head, for ``--pretrained``).
    """
    expected = model.state_dict()
    if exclude_prefix:
        expected = {k: v for k, v in expected.items() if not k.startswith(exclude_prefix)}
        state = {k: v for k, v in state.items() if not k.startswith(exclude_prefix)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match arch {arch!r} "
            f"(missing {len(missing)} e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source}: tensor {k} has shape {tuple(state[k].shape)}, {arch} expects {tuple(expected[k].shape)}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=not exclude_prefix)


def save_checkpoint(
    model: nn.Module, meta: ModelMetadata, path: str | Path, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a checkpoint folder. ``dtype=torch.float16`` halves the size (floating tensors only)."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu").contiguous()
        if v.is_floating_point():
            v = v.to(dtype)
        state[k] = v
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "arch": meta.arch})
    (folder / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n", encoding="utf-8")
    return folder
