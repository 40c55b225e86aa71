"""NormGate's ML library: architectures, checkpoints, saliency engine, Pointing Game, data, training.

It never imports ``service`` or FastAPI.
"""

from models.architectures import SUPPORTED_ARCHS, build_model
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from models.metadata import ModelMetadata

__all__ = [
    "SUPPORTED_ARCHS",
    "Checkpoint",
    "CheckpointError",
    "ModelMetadata",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]
