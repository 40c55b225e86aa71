"""Synthetic DICOM radiographs for the DICOMweb tests: a DX image with patient and study attributes."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage (only for routing tests: NormGate serves no CT)

# Patient data the logs must never show (test_dicomweb's PHI test looks for these strings).
PHI_NAME = "Sentinel^Patricia^Quinn"
PHI_ID = "PHI-7731-SENTINEL"


def chest_like(height: int, width: int, seed: int = 0, bright_object: tuple[int, int] | None = None) -> np.ndarray:
    """12-bit attenuation-like values (higher = denser = whiter on screen) with a smooth body, noise and,
    optionally, a dense square "foreign object" centred at ``bright_object`` = (row, col)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(-1, 1, height)[:, None]
    cols = np.linspace(-1, 1, width)[None, :]
    body = 1400 + 900 * np.exp(-(rows**2 + (cols * 1.4) ** 2) * 1.5)
    image = body + rng.normal(0, 40, (height, width))
    if bright_object is not None:
        r, c = bright_object
        half = max(2, min(height, width) // 20)
        image[max(r - half, 0) : r + half, max(c - half, 0) : c + half] = 4000
    return image.clip(0, 4095).astype(np.uint16)


def dx_instance(
    attenuation: np.ndarray,
    *,
    photometric: str = "MONOCHROME1",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_name: str = PHI_NAME,
    patient_id: str = PHI_ID,
    modality: str = "DX",
    sop_class_uid: str = DX_FOR_PRESENTATION,
    body_part: str | None = None,
) -> bytes:
    """A DX For Presentation Part 10 file of ``attenuation`` (uint16, 12 bits stored).

    MONOCHROME1 stores the complement (PS3.3 C.7.6.3.1.2: minimum value = white), so a dense object is *low*
    in the stored pixels; the decoder inverts it back and the model sees the same array as for MONOCHROME2.
    """
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19610203"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC-PHI-55"
    ds.StudyDate, ds.StudyTime = "20260102", "101500"
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = attenuation.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    stored = (4095 - attenuation) if photometric == "MONOCHROME1" else attenuation
    ds.PixelData = np.ascontiguousarray(stored.astype(np.uint16)).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
