"""Decode limits: the library's one definition of how much an image may cost before a pixel is decoded.

The service's settings (``NORMGATE_MAX_BODY_MB``, ``NORMGATE_MAX_PIXELS``, ``NORMGATE_MAX_DICOM_ELEMENT_MB``,
``NORMGATE_MAX_DECODE_MB``, ``NORMGATE_MAX_FRAMES``) take their defaults from here; docs/ingestion.md is tested
against these values.
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
    # The estimated peak memory of decoding one image and preparing it for a model: its decoded bytes (from the
    # header) × the pipeline's measured working factor for its layout (models/imaging/budget.py). 768 MiB
    # admits every image under max_pixels but 32-bit and colour DICOM above ~40 M pixels; a 3072² 16-bit
    # radiograph needs ~90 MiB. The service runs decodes in worker processes whose total fits the container's
    # memory request (docs/operations.md, "Memory").
    max_decode_bytes: int = 768 * MIB
    # PNG: chunks of any kind (IDAT included; libpng writes 8 KiB IDATs, so 64 MiB of them is 8192) and
    # ancillary chunks (tEXt, iCCP, eXIf, …: metadata, never needed for pixels). Pillow parses each chunk in
    # Python: 2 million empty chunks took 10 s to refuse before this cap.
    max_png_chunks: int = 32_768
    max_png_ancillary_chunks: int = 256
    max_png_ancillary_bytes: int = 16 * MIB
    # JPEG scans (SOS markers): a progressive decoder passes over the whole coefficient buffer once per scan.
    # Encoders write 1–3 (baseline) or ~10 (libjpeg's progressive script; mozjpeg's are similar).
    max_jpeg_scans: int = 64
    # Frames of one multi-frame DICOM that are assessed (a cine): each is one model input. Cardiac cines have
    # 20–50 phases; 64 is also the model queue's default bound, which a cine counts against frame by frame.
    max_frames: int = 64


DEFAULT_LIMITS = DecodeLimits()

__all__ = ["DEFAULT_LIMITS", "MIB", "DecodeLimits"]
