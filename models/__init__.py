"""NormGate's ML library: architectures, checkpoints, saliency engine, Pointing Game, data, training.

It never imports ``service`` or FastAPI.
"""

from models.architectures import SUPPORTED_ARCHS, build_model
from models.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "SUPPORTED_ARCHS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMeta",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]
