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


ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage


def cine_frames(n_frames: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """uint16 [n, rows, cols], 12 bits: a bright disc ("blood pool") that grows and shrinks over the frames on a
    darker, noisy body, so consecutive frames differ and every frame has structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    frames = []
    for i in range(n_frames):
        radius = min(rows, cols) * (0.18 + 0.08 * np.sin(2 * np.pi * i / max(n_frames, 1)))
        body = 700 + 500 * np.exp(-(((yy - rows / 2) / rows) ** 2 + ((xx - cols / 2) / cols) ** 2) * 4)
        disc = np.hypot(yy - rows / 2, xx - cols / 2) < radius
        frame = body + 2200 * disc + rng.normal(0, 60, (rows, cols))
        frames.append(frame.clip(0, 4095))
    return np.stack(frames).astype(np.uint16)


def _mr_common(
    ds: FileDataset,
    sop_class_uid: str,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    series_description: str | None,
    body_part: str | None,
    rows: int,
    cols: int,
) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["frame-of-reference", study_uid])
    ds.PatientName = PHI_NAME
    ds.PatientID = PHI_ID
    ds.PatientBirthDate = "19610203"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC-PHI-55"
    ds.StudyDate, ds.StudyTime = "20260102", "101500"
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.Modality = "MR"
    ds.SeriesNumber = 3
    if series_description is not None:
        ds.SeriesDescription = series_description
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0


def _part10(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _file(sop_class_uid: str, sop_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)


def enhanced_mr(
    frames: np.ndarray,
    *,
    series_description: str | None = "4CH cine",
    body_part: str | None = "HEART",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    window: tuple[float, float] | None = (2048.0, 4096.0),
    frame_windows: list[tuple[float, float]] | None = None,
    number_of_frames: int | None = None,
    pixel_data: bytes | None = None,
) -> bytes:
    """A minimal Enhanced MR object holding ``frames`` (uint16 [F, H, W]): Pixel Value Transformation and Frame
    VOI LUT in the shared functional groups (``window``), or per frame (``frame_windows``). The default window
    maps stored v to v / 4095 exactly, as the 16-bit PNGs of the synthetic data set do.
    ``number_of_frames`` / ``pixel_data`` override what the header says and what the data hold."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    sop_uid = sop_uid or generate_uid()
    count, rows, cols = frames.shape
    ds = _file(ENHANCED_MR, sop_uid)
    _mr_common(
        ds,
        ENHANCED_MR,
        sop_uid,
        study_uid or generate_uid(),
        series_uid or generate_uid(),
        series_description,
        body_part,
        rows,
        cols,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = count if number_of_frames is None else number_of_frames

    def item(**values: object) -> Dataset:
        entry = Dataset()
        for keyword, value in values.items():
            setattr(entry, keyword, value)
        return entry

    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([item(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")])
    if window is not None and frame_windows is None:
        shared.FrameVOILUTSequence = Sequence([item(WindowCenter=window[0], WindowWidth=window[1])])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for index in range(count):
        entry = item(FrameContentSequence=Sequence([item(TemporalPositionIndex=index + 1)]))
        if frame_windows is not None:
            center, width = frame_windows[index]
            entry.FrameVOILUTSequence = Sequence([item(WindowCenter=center, WindowWidth=width)])
        per_frame.append(entry)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(frames).tobytes() if pixel_data is None else pixel_data
    return _part10(ds)


def mr_series(
    frames: np.ndarray,
    *,
    series_description: str | None = "4CH cine",
    body_part: str | None = "HEART",
    study_uid: str | None = None,
    series_uid: str | None = None,
    window: tuple[float, float] = (2048.0, 4096.0),
    cardiac_number_of_images: int | None = -1,
) -> list[bytes]:
    """A classic MR series: one single-frame MR Image instance per frame of ``frames`` (uint16 [F, H, W]), with
    InstanceNumber 1…F, TriggerTime and the image plane of a 4-chamber view, sharing study and series UIDs.
    ``cardiac_number_of_images``: -1 declares F, None leaves the attribute out."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    count, rows, cols = frames.shape
    instances = []
    for index in range(count):
        sop_uid = generate_uid(entropy_srcs=[series_uid, str(index)])
        ds = _file(MR_IMAGE, sop_uid)
        _mr_common(ds, MR_IMAGE, sop_uid, study_uid, series_uid, series_description, body_part, rows, cols)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.InstanceNumber = index + 1
        ds.TriggerTime = f"{index * 40.0:.1f}"
        if cardiac_number_of_images is not None:
            ds.CardiacNumberOfImages = count if cardiac_number_of_images == -1 else cardiac_number_of_images
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SS", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "3.2", "1.6", 1
        ds.PixelSpacing = ["1.5", "1.5"]
        ds.SliceThickness = "7"
        ds.ImageOrientationPatient = ["0.8", "0.6", "0", "0", "0", "-1"]
        ds.ImagePositionPatient = ["-150", "-120", "40"]
        ds.PatientOrientation = ["L", "P"]
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
        ds.PixelData = np.ascontiguousarray(frames[index]).tobytes()
        instances.append(_part10(ds))
    return instances
