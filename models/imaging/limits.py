"""Decode limits: the library's one definition of how much an image may cost before a pixel is decoded.

The service's settings (``NORMGATE_MAX_BODY_MB``, ``NORMGATE_MAX_PIXELS``, ``NORMGATE_MAX_DICOM_ELEMENT_MB``)
take their defaults from here; docs/ingestion.md is tested against these values.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class DecodeLimits:
    """Limits checked from headers, before any pixel buffer is allocated."""

    max_body_bytes: int = 64 * MIB
    # Decompression-bomb guard on width × height × frames. 60 M admits the largest detectors (43 × 43 cm at
    # 50 µm is 8600² = 74 M only for mammography tomosynthesis; chest DR panels are ≤ 3072 × 3072 = 9.4 M).
    max_pixels: int = 60_000_000
    max_dicom_element_bytes: int = 64 * MIB


DEFAULT_LIMITS = DecodeLimits()

__all__ = ["DEFAULT_LIMITS", "MIB", "DecodeLimits"]
