"""Why an image was refused: one exception per kind, each with a machine-readable ``code``.

The codes are the API's error codes (docs/api.md); the service maps each to its HTTP status in one place
(``service.errors``). The library itself knows nothing of HTTP.
"""

from __future__ import annotations


class ImageError(ValueError):
    """An image that cannot be used; ``detail`` is a sentence for the sender, never a stack trace."""

    code = "bad_image"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadImage(ImageError):
    """Undecodable, empty or truncated bytes; a DICOM without Pixel Data."""

    code = "bad_image"


class TooLarge(ImageError):
    """Body bytes, pixel count or a DICOM element over the decode limits."""

    code = "too_large"


class UnsupportedMediaType(ImageError):
    """A content type, DICOM transfer syntax or colour model no installed decoder handles."""

    code = "unsupported_media_type"


class UnsupportedImage(ImageError):
    """A well-formed image of a kind the gate does not assess (an animated PNG, multi-frame DICOM)."""

    code = "bad_parameter"


__all__ = ["BadImage", "ImageError", "TooLarge", "UnsupportedImage", "UnsupportedMediaType"]
