"""NormGate's ML library: architectures, checkpoints, saliency engine, Pointing Game, data, training.

It never imports ``service`` or FastAPI.

The top-level names are imported on first use (PEP 562), so ``import models.imaging.decode`` does not load
torch: the service's decode worker processes decode images without it (docs/ingestion.md, "Decode budget").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.architectures import SUPPORTED_ARCHS, build_model
    from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
    from models.metadata import ModelMetadata

_HOME = {
    "SUPPORTED_ARCHS": "models.architectures",
    "build_model": "models.architectures",
    "Checkpoint": "models.checkpoint",
    "CheckpointError": "models.checkpoint",
    "load_checkpoint": "models.checkpoint",
    "save_checkpoint": "models.checkpoint",
    "ModelMetadata": "models.metadata",
}

__all__ = [
    "SUPPORTED_ARCHS",
    "Checkpoint",
    "CheckpointError",
    "ModelMetadata",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value
