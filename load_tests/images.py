"""Synthetic radiograph bodies for the load tests and benchmarks: 16-bit DICOM, PNG, JPEG.

Plain numpy/Pillow/pydicom, no Locust import (Locust monkey-patches the standard library on import), so the
benchmarks and tests can build exactly the bodies the Locust users send.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def radiograph(rows: int, cols: int, seed: int, bits: int = 16) -> np.ndarray:
    """A chest-radiograph-like image (bright mediastinum, darker lungs, noise, one very bright 'object')."""
    rng = np.random.default_rng(seed)
    y = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
    body = np.exp(-(y**2 * 1.2 + x**2 * 2.0))
    lungs = np.exp(-(((np.abs(x) - 0.45) / 0.25) ** 2 + (y / 0.6) ** 2))
    top = (1 << bits) - 1
    image = top * (0.15 + 0.55 * body - 0.25 * lungs) + rng.normal(0, top * 0.01, (rows, cols)).astype(np.float32)
    oy, ox = int(rows * (0.3 + 0.3 * rng.random())), int(cols * (0.25 + 0.5 * rng.random()))
    image[oy : oy + rows // 60, ox : ox + cols // 60] = top
    return image.clip(0, top).astype(np.uint16 if bits == 16 else np.uint8)


def dicom_bytes(pixels: np.ndarray, seed: int) -> bytes:
    """A DX-like Explicit VR Little Endian DICOM file of a 16-bit (12 bits stored) MONOCHROME2 image."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"normgate-load-{seed}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = f"LOAD{seed:04d}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels >> 4).astype("<u2").tobytes()  # 12 bits stored
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else pixels).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()
