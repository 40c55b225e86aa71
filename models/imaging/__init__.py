"""The one decode path of NormGate: bytes or a file → the grayscale array a model sees, and that array → the
model's input grid.

Training (``models.datasets``), evaluation (``models.evaluation``), the viewer and ``/assess`` all call these two
steps, so the same DICOM, PNG or JPEG gives the same tensor everywhere:

    from models.imaging import decode_image, decode_file, preprocess_batch
    image = decode_file("chest.dcm")                       # DecodedImage: float32 [H, W] in [0, 1], MONOCHROME2
    batch = preprocess_batch([image.pixels], (256, 256), mean, std)   # [1, 3, 256, 256] normalised

``decode`` holds the DICOM pixel pipeline (Modality LUT, VOI LUT/window, MONOCHROME1, padding, compressed
transfer syntaxes) and the PNG/JPEG readers with their header-first size checks; ``grid`` the resize and
normalisation; ``limits`` the decode limits; ``errors`` why an image is refused.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.imaging.decode import (
    DICOM_MEDIA_TYPE,
    JPEG_MEDIA_TYPE,
    PNG_MEDIA_TYPE,
    DecodedImage,
    decode_file,
    decode_image,
    media_type_of,
    sniff_media_type,
    to_display_png,
)
from models.imaging.errors import BadImage, ImageError, TooLarge, UnsupportedImage, UnsupportedMediaType
from models.imaging.limits import DEFAULT_LIMITS, DecodeLimits

if TYPE_CHECKING:
    from models.imaging.grid import (
        grid_point_to_original,
        normalise,
        original_box_to_grid,
        preprocess_batch,
        resize_unit,
    )

# The grid functions need torch; they are imported on first use (PEP 562) so that decoding alone (the service's
# decode worker processes) never loads it.
_GRID_NAMES = frozenset(
    {"grid_point_to_original", "normalise", "original_box_to_grid", "preprocess_batch", "resize_unit"}
)


def __getattr__(name: str) -> Any:
    if name not in _GRID_NAMES:
        raise AttributeError(f"module 'models.imaging' has no attribute {name!r}")
    value = getattr(importlib.import_module("models.imaging.grid"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_LIMITS",
    "DICOM_MEDIA_TYPE",
    "JPEG_MEDIA_TYPE",
    "PNG_MEDIA_TYPE",
    "BadImage",
    "DecodeLimits",
    "DecodedImage",
    "ImageError",
    "TooLarge",
    "UnsupportedImage",
    "UnsupportedMediaType",
    "decode_file",
    "decode_image",
    "grid_point_to_original",
    "media_type_of",
    "normalise",
    "original_box_to_grid",
    "preprocess_batch",
    "resize_unit",
    "sniff_media_type",
    "to_display_png",
]
