"""Checkpoint folders: ``model.safetensors`` (weights) + ``model.json`` (metadata), SPEC §7.

Weights are only ever read with safetensors (no pickle). Metadata is validated against the architecture
before the weights are loaded so that a mismatched or corrupt folder fails with a sentence that names the
file and the problem, not a stack trace from ``load_state_dict``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.architectures import (
    SUPPORTED_ARCHS,
    build_model,
    default_normgrad_layers,
)

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, corrupt or does not match its architecture."""


@dataclass
class CheckpointMeta:
    name: str
    version: str
    arch: str
    input_size: list[int]  # [height, width] of the model input grid
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    classes: list[str] = field(default_factory=lambda: ["no_foreign_object", "foreign_object"])
    positive_class: str = "foreign_object"
    threshold: float = 0.5
    normgrad_layers: list[str] = field(default_factory=list)
    # A sentence, or (models.train) a dict: data root, fingerprint, split sizes, exact command, seed, epochs.
    trained_on: str | dict[str, Any] = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def negative_class(self) -> str:
        return next(c for c in self.classes if c != self.positive_class)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model.json") -> CheckpointMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
        ]
        if missing:
            raise CheckpointError(f"{source}: missing required field(s): {', '.join(missing)}")
        meta = cls(**{k: v for k, v in data.items() if k in known})
        meta.validate(source)
        return meta

    def validate(self, source: str = "model.json") -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise CheckpointError(f"{source}: unknown arch {self.arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
        if isinstance(self.input_size, int):
            self.input_size = [self.input_size, self.input_size]
        if len(self.input_size) != 2 or not all(isinstance(s, int) and 32 <= s <= 4096 for s in self.input_size):
            raise CheckpointError(f"{source}: input_size must be [height, width] in 32..4096, got {self.input_size!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != 3:
                raise CheckpointError(f"{source}: {key} must have 3 values, got {values!r}")
        if any(s <= 0 for s in self.std):
            raise CheckpointError(f"{source}: std values must be positive, got {self.std!r}")
        if len(self.classes) != 2 or len(set(self.classes)) != 2:
            raise CheckpointError(f"{source}: classes must be two distinct names, got {self.classes!r}")
        if self.positive_class not in self.classes:
            raise CheckpointError(f"{source}: positive_class {self.positive_class!r} is not one of {self.classes!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise CheckpointError(f"{source}: threshold must be in [0, 1], got {self.threshold!r}")
        if not self.normgrad_layers:
            self.normgrad_layers = default_normgrad_layers(self.arch)


@dataclass
class Checkpoint:
    model: nn.Module
    meta: CheckpointMeta
    path: Path | None = None


def _read_meta(folder: Path) -> CheckpointMeta:
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: no such file (a checkpoint folder needs {META_FILE})")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object")
    return CheckpointMeta.from_dict(data, source=str(meta_path))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder; the model comes back in eval mode, float32, on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    meta = _read_meta(folder)
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
    return Checkpoint(model=model, meta=meta, path=folder)


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
    model: nn.Module, meta: CheckpointMeta, path: str | Path, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a checkpoint folder. ``dtype=torch.float16`` halves the size (floating tensors only)."""
    from safetensors.torch import save_file

    meta.validate()
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
