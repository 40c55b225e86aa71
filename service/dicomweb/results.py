"""NormGate's answer about one DICOM image, as DICOM objects a PACS stores and a viewer shows, built with highdicom.

For every assessed image, in the original's study, each in a new series of its own (one Modality per series):

* a **Secondary Capture** (SC Image Storage 1.2.840.10008.5.1.4.1.1.7, PS3.3 A.8.1;
  ``highdicom.sc.SCImage``): the image as the model saw it with the saliency heatmap overlaid (the viewer's
  colour map and transparency ramp), the peak marked, and a banner above the image with the decision, the
  probability, the threshold, the model and the method burned in. RGB, 8 bits, Explicit VR Little Endian. Every
  PACS viewer shows it; it is the object for a glance.
* a **Segmentation** (Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4, PS3.3 A.51; ``highdicom.seg``): a
  BINARY segment "saliency region" on the original's pixel grid — the pixels where the heatmap, stretched over
  the whole image as in the /assess answer, reaches half of its range or more. Viewers that overlay DICOM SEG
  on its source image (OHIF, 3D Slicer, most PACS viewers with an AI-results panel) draw it on the original.
  Not written when there is no heatmap (an unassessable image the model never saw) or the region is empty.
* a **Comprehensive SR** (1.2.840.10008.5.1.4.1.1.88.33, PS3.3 A.35.3; ``highdicom.sr``) following TID 1500
  "Measurement Report" (PS3.16)::

      Imaging Measurement Report (DCM 126000), TID 1500
        Language, Observation Context: device observer = the model (UID from its name and version)
        Procedure Reported: plain radiography (CR/DX/DR) | magnetic resonance imaging (MR) | imaging procedure
        Image Library → the original
        Imaging Measurements
          Measurement Group (TID 1501) "NormGate assessment"
            Finding Type: the model's positive class (SCT 19227008 "Foreign body", or a 99NORMGATE code)
            Algorithm Identification (TID 4019): model name, version, parameters
            Source image for measurement group → the original
            NUM  (DCM 122157 "Probability")      = P(positive class), UCUM "1"   (absent when never computed)
            NUM  (DCM 122411 "Threshold Value")  = the decision threshold, UCUM "1"
            CODE (DCM 121075 "Recommendation")   = (REACQUIRE | ACCEPT | UNASSESSABLE, 99NORMGATE)
            CODE (UNASSESSABLE-WHY, 99NORMGATE)  = the reason's code          (unassessable only)
          Measurement Group (TID 1410) "saliency peak"
            Finding Type: (DCM 130404 "Saliency");  Algorithm Identification: the saliency method
            SCOORD POINT on the original (Image Region) = (x + 0.5, y + 0.5)
          Measurement Group (TID 1410) "saliency region"                       (when the SEG exists)
            Finding Type: (DCM 130404 "Saliency");  Referenced Segment → segment 1 of the SEG

  SCOORD Graphic Data is (column, row) where (0.0, 0.0) is the top left corner of the top left pixel (PS3.3
  C.18.6.1.1), so the 0-based pixel (x, y) of the /assess answer is the point (x + 0.5, y + 0.5). NUM items
  carry the exact binary value in Floating Point Value (0040,A161) besides the 16-character Numeric Value.

For a **series** (a cine stored as single-frame instances: every frame is assessed on arrival and gets the
three objects above) one more Comprehensive SR, made when the series is complete (``build_series_report``;
service/dicomweb/series.py says when), in a series of its own (Series Number ``series_number + 3``)::

      Imaging Measurement Report (DCM 126000), TID 1500
        Image Library → every frame (instance) of the series, in order
        Imaging Measurements
          Measurement Group (TID 1501) "NormGate series assessment"
            Source image for measurement group → every frame
            NUM Probability (of the deciding frame), NUM Threshold Value, CODE Recommendation (the series'),
            CODE UNASSESSABLE-WHY                                               (unassessable only)
          Measurement Group (TID 1501) "frame N" for each frame N (1-based, in series order)
            Source image for measurement group → that instance
            NUM Probability (absent when never computed), CODE Recommendation, CODE UNASSESSABLE-WHY
          Measurement Group (TID 1410) "saliency peak of frame N"   (the deciding frame, when it has a heatmap)
            SCOORD POINT on that instance

Codes come from PS3.16 (DCM, SCT, UCUM) where one fits; the others are NormGate's local scheme ``99NORMGATE``
(PS3.3 §8.1 reserves ``99`` prefixes for private schemes), declared in each SR's Coding Scheme Identification
Sequence. Code values are at most 16 characters (SH) by construction: a fixed table for decisions and reasons,
and class labels longer than that go to Long Code Value (0008,0119) — never truncated.

Patient and Study attributes are copied from the original; Laterality (type 2C) and Patient Orientation are
copied where the original has them and written empty where not. Series Number and Series Description come from
the model's ``results`` block in model.json (``ResultNaming``; a default derived from the model name otherwise), so
two models' result series never share a number. Every UID is derived from the original SOP Instance UID, the
model (name, version) and the saliency method: the same image sent again yields the same instances, which an
archive stores once.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import io
import logging
import zlib
from dataclasses import dataclass
from typing import Any, get_args

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from models.imaging.assessability import UnassessableReason
from models.metadata import ModelMetadata
from service.schemas import AssessResponse

log = logging.getLogger("normgate.dicomweb")

__all__ = [
    "COMPREHENSIVE_SR",
    "DECISION_CODES",
    "LOCAL_SCHEME",
    "REASON_CODES",
    "SC_MAX_SIDE",
    "SECONDARY_CAPTURE",
    "SEGMENTATION",
    "DicomResults",
    "ResultNaming",
    "ResultUids",
    "SeriesFrame",
    "build_results",
    "build_series_report",
    "dataset_bytes",
    "heatmap_overlay",
    "read_source_header",
    "series_report_uids",
]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
LOCAL_SCHEME = "99NORMGATE"
MANUFACTURER = "NormGate"
# The Secondary Capture's long side, at most: it is a summary for a glance in the PACS, next to the original
# (which stays the image to diagnose from); 1024 keeps an RGB instance near 3 MB whatever the detector size.
SC_MAX_SIDE = 1024
# The saliency region of the SEG: heatmap levels at or above this share of the 8-bit map's range.
SALIENCY_REGION_LEVEL = 0.5

# The local codes, each value at most 16 characters (SH). A decision or reason without an entry fails the tests.
DECISION_CODES: dict[str, Code] = {
    "reacquire": Code("REACQUIRE", LOCAL_SCHEME, "Reacquire image"),
    "accept": Code("ACCEPT", LOCAL_SCHEME, "Accept image"),
    "unassessable": Code("UNASSESSABLE", LOCAL_SCHEME, "Image cannot be assessed"),
}
REASON_CODES: dict[str, Code] = {
    "blank": Code("BLANK", LOCAL_SCHEME, "Blank image"),
    "too_small": Code("TOO-SMALL", LOCAL_SCHEME, "Image too small"),
    "low_dynamic_range": Code("LOW-DYN-RANGE", LOCAL_SCHEME, "Dynamic range too low"),
    "no_frames": Code("NO-FRAMES", LOCAL_SCHEME, "No frames to assess"),
    "unsupported_modality": Code("UNSUPP-MODALITY", LOCAL_SCHEME, "Modality not served by the model"),
    "out_of_distribution": Code("OUT-OF-DISTRIB", LOCAL_SCHEME, "Image outside the training distribution"),
}
UNASSESSABLE_REASON = Code("UNASSESSABLE-WHY", LOCAL_SCHEME, "Reason the image cannot be assessed")
SALIENCY = Code("130404", "DCM", "Saliency")
THRESHOLD_VALUE = Code("122411", "DCM", "Threshold Value")
_PROCEDURES = {
    "CR": Code("168537006", "SCT", "Plain radiography"),
    "DX": Code("168537006", "SCT", "Plain radiography"),
    "DR": Code("168537006", "SCT", "Plain radiography"),
    "MR": Code("113091000", "SCT", "Magnetic resonance imaging"),
}
_ANY_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
_CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=LOCAL_SCHEME,
    name="NormGate local codes",
    responsible_organization="NormGate",
)

# Patient (C.7.1.1), Patient Study (C.7.2.2) and General Study (C.7.2.1) attributes copied from the original
# into the SC and the SEG (highdicom's SR copies its own from the first evidence item, the original); the
# type 2 ones are written empty when the original lacks them.
_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "IssuerOfAccessionNumberSequence",
)
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

# matplotlib "inferno", 32 stops: the radiographer viewer's colour map (service/static/viewer/viewer.js).
_INFERNO_STOPS = [
    0x000004,
    0x040312,
    0x0B0724,
    0x150B37,
    0x230C4C,
    0x310A5C,
    0x3E0966,
    0x4C0C6B,
    0x5A116E,
    0x67166E,
    0x741A6E,
    0x801F6C,
    0x8F2469,
    0x9B2964,
    0xA82E5F,
    0xB43359,
    0xC13A50,
    0xCC4248,
    0xD74B3F,
    0xE05536,
    0xE9612B,
    0xEF6E21,
    0xF57B17,
    0xF8890C,
    0xFB9906,
    0xFCA80D,
    0xFBB81D,
    0xF9C72F,
    0xF5D949,
    0xF2E865,
    0xF3F586,
    0xFCFFA4,
]
HEATMAP_OPACITY = 0.6  # the viewer's default layer opacity


def _inferno_lut() -> np.ndarray:
    stops = np.array([[(c >> 16) & 255, (c >> 8) & 255, c & 255] for c in _INFERNO_STOPS], dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(stops))
    levels = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(levels, positions, stops[:, k]) for k in range(3)], axis=1)


_COLOUR_LUT = _inferno_lut()  # [256, 3] float in 0..255


def _alpha_ramp(levels: np.ndarray) -> np.ndarray:
    """Weak saliency stays see-through: 0 below 20 % of the map's range, smoothstep to 1 at 80 %."""
    t = np.clip((levels - 0.2) / 0.6, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class ResultNaming:
    """Series Number and Series Description of one model's result series: the SC gets ``series_number``, the
    SEG ``series_number + 1``, the SR ``series_number + 2``; each description is ``series_description`` plus
    the object's role, at most 64 characters (LO)."""

    series_number: int
    series_description: str

    @classmethod
    def for_model(cls, meta: ModelMetadata) -> ResultNaming:
        """From model.json's ``results`` block, or derived from the model name: numbers 9000–9980 in steps of
        10 (CRC-32 of the name), description "NormGate <name>" — distinct models get distinct series."""
        if meta.results is not None:
            return cls(meta.results.series_number, meta.results.series_description)
        return cls(9000 + 10 * (zlib.crc32(meta.name.encode()) % 99), f"NormGate {meta.name}")

    def describe(self, role: str) -> str:
        suffix = f" {role}"
        return self.series_description[: 64 - len(suffix)] + suffix


@dataclass(frozen=True)
class ResultUids:
    sc_series: str
    sc_instance: str
    seg_series: str
    seg_instance: str
    sr_series: str
    sr_instance: str

    @classmethod
    def derive(cls, source_sop_instance_uid: str, model_name: str, model_version: str, method: str) -> ResultUids:
        """UIDs that depend only on (original, model, method): a re-sent image maps onto the same results."""

        def uid(role: str) -> str:
            return str(
                generate_uid(
                    entropy_srcs=["normgate", source_sop_instance_uid, model_name, model_version, method, role]
                )
            )

        return cls(
            sc_series=uid("sc-series"),
            sc_instance=uid("sc"),
            seg_series=uid("seg-series"),
            seg_instance=uid("seg"),
            sr_series=uid("sr-series"),
            sr_instance=uid("sr"),
        )


@dataclass(frozen=True)
class DicomResults:
    secondary_capture: Dataset
    segmentation: Dataset | None
    structured_report: Dataset
    uids: ResultUids

    @property
    def datasets(self) -> list[Dataset]:
        """Every result object, in the order they are stored: SC, SEG (when there is one), SR."""
        found = [self.secondary_capture, self.segmentation, self.structured_report]
        return [ds for ds in found if ds is not None]

    def part10_files(self) -> list[bytes]:
        return [dataset_bytes(ds) for ds in self.datasets]


def read_source_header(body: bytes) -> Dataset:
    """The original's attributes without its pixels. Called only after ``decode_image`` accepted the same
    bytes, so the parse is known to succeed (``force`` covers the preamble-less datasets ingest accepts)."""
    return pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True, force=True)


def result_uids(source_sop_instance_uid: str, model_name: str, model_version: str, method: str) -> ResultUids:
    return ResultUids.derive(source_sop_instance_uid, model_name, model_version, method)


# ---------------------------------------------------------------------------------------------------------
# The picture
# ---------------------------------------------------------------------------------------------------------


def heatmap_overlay(display: np.ndarray, heatmap: np.ndarray, point: tuple[int, int] | None) -> np.ndarray:
    """[h, w, 3] uint8: ``display`` (float [H, W] in [0, 1], the model's view of the image) scaled so its long
    side is at most ``SC_MAX_SIDE``, with ``heatmap`` (uint8 [gh, gw], stretched over the whole image like the
    /assess heatmap) blended on top and ``point`` (original pixels) marked with a ring and a cross."""
    height, width = display.shape
    scale = min(1.0, SC_MAX_SIDE / max(height, width))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    gray8 = Image.fromarray(np.rint(np.clip(display, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    gray = np.asarray(gray8.resize((out_w, out_h), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    heat = Image.fromarray(heatmap, mode="L").resize((out_w, out_h), Image.Resampling.BILINEAR)
    heat_levels = np.asarray(heat, dtype=np.float64) / 255.0
    colour = _COLOUR_LUT[np.asarray(heat, dtype=np.uint8)] / 255.0
    alpha = (HEATMAP_OPACITY * _alpha_ramp(heat_levels))[..., None]
    blended = gray[..., None] * (1.0 - alpha) + colour * alpha
    picture = Image.fromarray(np.rint(blended * 255.0).clip(0, 255).astype(np.uint8), mode="RGB")
    if point is not None:
        # Pixel centres: original (x, y) sits at ((x + 0.5) * scale, (y + 0.5) * scale) in the scaled image.
        cx = (point[0] + 0.5) * out_w / width
        cy = (point[1] + 0.5) * out_h / height
        radius = max(6.0, 0.025 * max(out_w, out_h))
        draw = ImageDraw.Draw(picture)
        line = max(2, round(radius / 5))
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=(0, 255, 255), width=line)
        draw.line([cx - 2 * radius, cy, cx - radius / 2, cy], fill=(0, 255, 255), width=line)
        draw.line([cx + radius / 2, cy, cx + 2 * radius, cy], fill=(0, 255, 255), width=line)
        draw.line([cx, cy - 2 * radius, cx, cy - radius / 2], fill=(0, 255, 255), width=line)
        draw.line([cx, cy + radius / 2, cx, cy + 2 * radius], fill=(0, 255, 255), width=line)
    return np.asarray(picture)


def _fitting_font(
    draw: ImageDraw.ImageDraw, lines: list[str], width: int, largest: int
) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int]:
    size = largest
    while size > 8:
        font = ImageFont.load_default(size=size)
        if all(draw.textlength(line, font=font) <= width - 2 * max(4, size // 2) for line in lines):
            return font, size
        size -= 1
    return ImageFont.load_default(size=8), 8


def burn_in_banner(picture: np.ndarray, lines: list[str], reacquire: bool) -> np.ndarray:
    """The picture with a black band on top holding ``lines``: the text never covers anatomy. The first line
    (the decision) is red for reacquire and green for accept."""
    height, width, _ = picture.shape
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font, size = _fitting_font(probe, lines, width, largest=max(12, min(40, width // 28)))
    line_height = round(size * 1.35)
    band = line_height * len(lines) + size
    canvas = Image.new("RGB", (width, height + band), (0, 0, 0))
    canvas.paste(Image.fromarray(picture, mode="RGB"), (0, band))
    draw = ImageDraw.Draw(canvas)
    margin = max(4, size // 2)
    for row, text in enumerate(lines):
        colour = ((255, 80, 80) if reacquire else (80, 220, 120)) if row == 0 else (235, 235, 235)
        draw.text((margin, size // 2 + row * line_height), text, font=font, fill=colour)
    return np.asarray(canvas)


def banner_lines(answer: AssessResponse, positive_class: str) -> list[str]:
    decision = answer.decision.upper()
    if answer.decision == "unassessable":
        first = f"NormGate: UNASSESSABLE ({answer.reason or 'no reason given'})"
    else:
        first = f"NormGate: {decision} ({answer.label})"
    probability = "not computed" if answer.probability is None else f"{answer.probability:.3f}"
    return [
        first,
        f"P({positive_class}) = {probability}   threshold {answer.threshold:.3f}",
        f"model {answer.model.name} {answer.model.version} ({answer.model.arch})   "
        f"{answer.heatmap.method if answer.heatmap else 'no heatmap'}",
        "Quality gate output - not for diagnosis",
    ]


# ---------------------------------------------------------------------------------------------------------
# The objects
# ---------------------------------------------------------------------------------------------------------


def _copy_patient_and_study(ds: Dataset, source: Dataset) -> None:
    # Copied values (patient name, …) keep their encoding; NormGate's own text is ASCII, valid in any of them.
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            ds[keyword] = source[keyword]
        elif keyword in _TYPE_2:
            setattr(ds, keyword, "")


def _without_patient_and_study(source: Dataset) -> Dataset:
    """The original's header without its Patient and Study attributes (Study Instance UID kept), for
    highdicom: it parses and validates what it copies (a malformed birth date in the original would fail the
    result), while NormGate copies those values verbatim itself (``_copy_patient_and_study``)."""
    stand_in = copy.deepcopy(source)
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword == "StudyInstanceUID":
            continue
        if keyword in _TYPE_2:
            setattr(stand_in, keyword, "")
        elif keyword in stand_in:
            del stand_in[keyword]
    return stand_in


def _copy_image_context(ds: Dataset, source: Dataset, *, unknown_laterality_empty: bool) -> None:
    """Laterality (General Series, type 2C: required for a paired body part), the body part and Patient
    Orientation (General Image, type 2C) as the original has them.

    Laterality is the original's Laterality or Image Laterality when that is R or L. Without one, but with the
    body part named (Body Part Examined, Anatomic Region Sequence), it stays absent: the part is then unpaired
    (a chest) or the original itself omits it. With neither, NormGate cannot know, and an image (the SC) gets
    an empty Laterality — "unknown", which the IOD allows (dciodvfy warns; docs/integration.md); the SEG
    leaves it out, as its IOD wants when nothing says the part is paired."""
    laterality = str(source.get("Laterality") or source.get("ImageLaterality") or "")
    body_part_known = False
    for keyword in ("BodyPartExamined", "AnatomicRegionSequence"):
        if source.get(keyword):
            ds[keyword] = source[keyword]
            body_part_known = True
    if laterality in ("R", "L"):
        ds.Laterality = laterality
    elif not body_part_known and unknown_laterality_empty:
        ds.Laterality = ""
    elif "Laterality" in ds:
        del ds.Laterality
    orientation = source.get("PatientOrientation")
    ds.PatientOrientation = list(orientation) if orientation and len(orientation) == 2 else ""


def _stamp(ds: Dataset, now: dt.datetime, software_versions: list[str], model_name: str) -> None:
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S.%f")
    ds.SeriesDate = ds.ContentDate
    ds.SeriesTime = ds.ContentTime
    ds.ManufacturerModelName = f"NormGate quality gate ({model_name})"[:64]
    ds.SoftwareVersions = software_versions


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = str(source.SOPClassUID)
    item.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    return item


def build_secondary_capture(
    source: Dataset,
    picture: np.ndarray,
    answer: AssessResponse,
    uids: ResultUids,
    naming: ResultNaming,
    now: dt.datetime,
    software_versions: list[str],
) -> Dataset:
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(picture, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        # PATIENT with a placeholder orientation; the original's (or an empty) Patient Orientation replaces it.
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=uids.sc_series,
        series_number=naming.series_number,
        sop_instance_uid=uids.sc_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=naming.describe("overlay"),
    )
    _copy_patient_and_study(sc, source)
    _copy_image_context(sc, source, unknown_laterality_empty=True)
    _stamp(sc, now, software_versions, answer.model.name)
    sc.ConversionType = "WSD"  # SC Equipment (C.8.6.1): a workstation made it
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.LossyImageCompression = "00"
    method = answer.heatmap.method if answer.heatmap else "none"
    probability = "not computed" if answer.probability is None else f"{answer.probability:.4f}"
    sc.DerivationDescription = (
        f"NormGate {answer.model.name} {answer.model.version}: {method} saliency heatmap overlaid on the "
        f"windowed original, peak marked, decision {answer.decision} (P={probability}) burned in"
    )[:1024]
    source_item = _source_reference(source)
    source_item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    sc.SourceImageSequence = [source_item]
    sc.ReferencedImageSequence = [_source_reference(source)]
    return sc


def saliency_region(heatmap: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """bool [rows, columns]: the 8-bit ``heatmap`` stretched over the original's grid (bilinear, as the
    viewer and the SC stretch it), at or above ``SALIENCY_REGION_LEVEL`` of its range."""
    stretched = np.asarray(Image.fromarray(heatmap, mode="L").resize((columns, rows), Image.Resampling.BILINEAR))
    return np.asarray(stretched >= round(SALIENCY_REGION_LEVEL * 255))


def build_segmentation(
    source: Dataset,
    region: np.ndarray,
    answer: AssessResponse,
    uids: ResultUids,
    naming: ResultNaming,
    now: dt.datetime,
    software_versions: list[str],
) -> Dataset:
    method = answer.heatmap.method if answer.heatmap else "none"
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"NormGate {answer.model.name}"[:64],
        version=answer.model.version[:64],
        family=codes.DCM.ArtificialIntelligence,
        parameters={"saliency": method, "region": f">= {SALIENCY_REGION_LEVEL:g} of the map's range"},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="saliency region",
        segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
        segmented_property_type=SALIENCY,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=[_without_patient_and_study(source)],
        pixel_array=region.astype(np.uint8)[None, ...],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=uids.seg_series,
        series_number=naming.series_number + 1,
        sop_instance_uid=uids.seg_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"NormGate quality gate ({answer.model.name})"[:64],
        software_versions=software_versions[0],  # the full list is set by _stamp below
        device_serial_number=answer.model.version[:64],
        series_description=naming.describe("saliency region"),
    )
    _copy_patient_and_study(seg, source)
    _copy_image_context(seg, source, unknown_laterality_empty=False)
    _stamp(seg, now, software_versions, answer.model.name)
    return seg


def _code(value: str, scheme: str, meaning: str) -> hd.sr.CodedConcept:
    # highdicom writes a value over 16 characters as Long Code Value (0008,0119): never truncated.
    return hd.sr.CodedConcept(value, scheme, meaning)


def finding_code(label: str) -> hd.sr.CodedConcept:
    """The code of a class label: SCT "Foreign body" for foreign_object, else the label in 99NORMGATE."""
    if label == "foreign_object":
        return hd.sr.CodedConcept.from_code(codes.SCT.ForeignBody)
    return _code(label.upper(), LOCAL_SCHEME, label.replace("_", " "))


def _region_source(source: Dataset, answer: AssessResponse) -> hd.sr.SourceImageForRegion:
    """The image the saliency peak lies on: the original, and in a multi-frame original the deciding frame."""
    if answer.frames is not None and answer.worst_frame is not None:
        return hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
            referenced_frame_numbers=[answer.worst_frame + 1],
        )
    region_source: hd.sr.SourceImageForRegion = _source_for(hd.sr.SourceImageForRegion, source)
    return region_source


def _source_for(cls: Any, source: Dataset) -> Any:
    return cls(referenced_sop_class_uid=str(source.SOPClassUID), referenced_sop_instance_uid=str(source.SOPInstanceUID))


def _library_entry(source: Dataset) -> Dataset:
    """The original as highdicom's Image Library (TID 1601) sees it. The modality-specific descriptors (TID 1603
    projection radiography: Patient Orientation, Imager Pixel Spacing; TID 1604 cross-sectional: orientation,
    position, spacing) are written when the original has what they need; otherwise the entry keeps the
    modality (from the SOP Class), Rows and Columns only."""
    try:
        hd.sr.ImageLibraryEntryDescriptors(source)
        return source
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        entry = Dataset()
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
            entry[keyword] = source[keyword]
        entry.Modality = ""  # only picks highdicom's modality-specific descriptors: none
        return entry


def build_structured_report(
    source: Dataset,
    answer: AssessResponse,
    positive_class: str,
    input_size: list[int],
    uids: ResultUids,
    naming: ResultNaming,
    evidence: list[Dataset],
    segmentation: Dataset | None,
    now: dt.datetime,
    software_versions: list[str],
) -> Dataset:
    method = answer.heatmap.method if answer.heatmap else "none"
    model = answer.model
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"NormGate {model.name}",
        version=model.version,
        parameters=[
            f"arch={model.arch}",
            f"input={input_size[0]}x{input_size[1]}",
            f"positive_class={positive_class}",
            f"calibration={answer.calibration or 'none'}",
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(generate_uid(entropy_srcs=["normgate-device", model.name, model.version])),
            name=f"NormGate {model.name}",
            manufacturer_name=MANUFACTURER,
            model_name=model.arch,
        ),
    )
    measurements = []
    if answer.probability is not None:
        measurements.append(
            hd.sr.Measurement(name=codes.DCM.Probability, value=answer.probability, unit=codes.UCUM.NoUnits)
        )
    measurements.append(hd.sr.Measurement(name=THRESHOLD_VALUE, value=answer.threshold, unit=codes.UCUM.NoUnits))
    evaluations = [hd.sr.QualitativeEvaluation(name=codes.DCM.Recommendation, value=DECISION_CODES[answer.decision])]
    if answer.decision == "unassessable" and answer.reason is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=UNASSESSABLE_REASON, value=REASON_CODES[answer.reason]))
    groups: list[Any] = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=str(generate_uid(entropy_srcs=["normgate-track", uids.sr_instance, "assessment"])),
                identifier="NormGate assessment",
            ),
            finding_type=finding_code(positive_class),
            algorithm_id=algorithm,
            source_images=[_source_for(hd.sr.SourceImageForMeasurementGroup, source)],
            measurements=measurements,
            qualitative_evaluations=evaluations,
        )
    ]
    saliency_algorithm = hd.sr.AlgorithmIdentification(name=method, version=model.version)
    if answer.point is not None:
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=str(generate_uid(entropy_srcs=["normgate-track", uids.sr_instance, "peak"])),
                    identifier="saliency peak",
                ),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POINT,
                    graphic_data=np.array([[answer.point.x + 0.5, answer.point.y + 0.5]]),
                    source_image=_region_source(source, answer),
                ),
                finding_type=SALIENCY,
                algorithm_id=saliency_algorithm,
            )
        )
    if segmentation is not None:
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=str(generate_uid(entropy_srcs=["normgate-track", uids.sr_instance, "region"])),
                    identifier="saliency region",
                ),
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    sop_class_uid=SEGMENTATION,
                    sop_instance_uid=uids.seg_instance,
                    frame_number=1,
                    segment_number=1,
                    source_image=_source_for(hd.sr.SourceImageForSegmentation, source),
                ),
                finding_type=SALIENCY,
                algorithm_id=saliency_algorithm,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(str(source.get("Modality", "")).upper(), _ANY_PROCEDURE),
        imaging_measurements=groups,
        referenced_images=[_library_entry(source)],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=uids.sr_series,
        series_number=naming.series_number + 2,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=naming.describe("report"),
        coding_schemes=[_CODING_SCHEME],
    )
    _copy_patient_and_study(sr, source)
    _stamp(sr, now, software_versions, model.name)
    _frame_or_segment_number(sr)
    return sr


@dataclass(frozen=True)
class SeriesFrame:
    """One frame (single-frame instance) of a series as its series report needs it: the original's header
    and that frame's result (``FrameResult`` fields, heatmap left out)."""

    source: Dataset
    probability: float | None
    decision: str
    reason: str | None
    point: tuple[int, int] | None


def series_report_uids(
    series_instance_uid: str, sop_instance_uids: list[str], model_name: str, model_version: str, method: str
) -> tuple[str, str]:
    """(SR series UID, SR instance UID) of a series report: the series UID from (series, model, method), the
    instance UID from the frames too, so the same frames give the same report and a grown series a new one."""
    common = ["normgate-series", series_instance_uid, model_name, model_version, method]
    return (
        str(generate_uid(entropy_srcs=[*common, "sr-series"])),
        str(generate_uid(entropy_srcs=[*common, *sorted(sop_instance_uids), "sr"])),
    )


def build_series_report(
    frames: list[SeriesFrame],
    answer: AssessResponse,
    method: str,
    positive_class: str,
    input_size: list[int],
    app_version: str,
    naming: ResultNaming,
    now: dt.datetime | None = None,
) -> Dataset:
    """The Comprehensive SR (TID 1500) of a whole series (module docstring): ``frames`` in series order,
    ``answer`` the series' decision (``frames`` and ``worst_frame`` as /assess answers a cine), ``method`` the
    saliency method its frames were explained with ("none" without heatmaps)."""
    now = now or dt.datetime.now()
    if not frames:
        raise ValueError("a series report needs at least one frame")
    model = answer.model
    first = frames[0].source
    sr_series, sr_instance = series_report_uids(
        str(first.SeriesInstanceUID), [str(f.source.SOPInstanceUID) for f in frames], model.name, model.version, method
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"NormGate {model.name}",
        version=model.version,
        parameters=[
            f"arch={model.arch}",
            f"input={input_size[0]}x{input_size[1]}",
            f"positive_class={positive_class}",
            f"calibration={answer.calibration or 'none'}",
            "series rule=reacquire if any assessable frame reaches the threshold",
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(generate_uid(entropy_srcs=["normgate-device", model.name, model.version])),
            name=f"NormGate {model.name}",
            manufacturer_name=MANUFACTURER,
            model_name=model.arch,
        ),
    )

    def tracking(identifier: str) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(
            uid=str(generate_uid(entropy_srcs=["normgate-track", sr_instance, identifier])), identifier=identifier
        )

    def assessment_group(
        identifier: str,
        sources: list[Dataset],
        probability: float | None,
        decision: str,
        reason: str | None,
        threshold: bool,
    ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
        measurements = []
        if probability is not None:
            measurements.append(
                hd.sr.Measurement(name=codes.DCM.Probability, value=probability, unit=codes.UCUM.NoUnits)
            )
        if threshold:
            measurements.append(
                hd.sr.Measurement(name=THRESHOLD_VALUE, value=answer.threshold, unit=codes.UCUM.NoUnits)
            )
        evaluations = [hd.sr.QualitativeEvaluation(name=codes.DCM.Recommendation, value=DECISION_CODES[decision])]
        if decision == "unassessable" and reason is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(name=UNASSESSABLE_REASON, value=REASON_CODES[reason]))
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(identifier),
            finding_type=finding_code(positive_class),
            algorithm_id=algorithm,
            source_images=[_source_for(hd.sr.SourceImageForMeasurementGroup, source) for source in sources],
            measurements=measurements,
            qualitative_evaluations=evaluations,
        )

    groups: list[Any] = [
        assessment_group(
            "NormGate series assessment",
            [f.source for f in frames],
            answer.probability,
            answer.decision,
            answer.reason,
            threshold=True,
        )
    ]
    for number, frame in enumerate(frames, start=1):
        groups.append(
            assessment_group(
                f"frame {number}", [frame.source], frame.probability, frame.decision, frame.reason, threshold=False
            )
        )
    worst_index = answer.worst_frame
    worst = frames[worst_index] if worst_index is not None else None
    if worst is not None and worst.point is not None and worst_index is not None:
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(f"saliency peak of frame {worst_index + 1}"),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POINT,
                    graphic_data=np.array([[worst.point[0] + 0.5, worst.point[1] + 0.5]]),
                    source_image=_source_for(hd.sr.SourceImageForRegion, worst.source),
                ),
                finding_type=SALIENCY,
                algorithm_id=hd.sr.AlgorithmIdentification(name=method, version=model.version),
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(str(first.get("Modality", "")).upper(), _ANY_PROCEDURE),
        imaging_measurements=groups,
        referenced_images=[_library_entry(f.source) for f in frames],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[_without_patient_and_study(f.source) for f in frames],
        content=report[0],
        series_instance_uid=sr_series,
        series_number=naming.series_number + 3,
        sop_instance_uid=sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=naming.describe("series report"),
        coding_schemes=[_CODING_SCHEME],
    )
    versions = [f"NormGate {app_version}", f"model {model.name} {model.version}"]
    _copy_patient_and_study(sr, first)
    _stamp(sr, now, versions, model.name)
    return sr


def _frame_or_segment_number(ds: Dataset) -> None:
    """Image references name a SEG frame or a segment, not both (PS3.3 C.18.4: Referenced Segment Number only
    when no Referenced Frame Number is present). highdicom writes both; the one frame of NormGate's SEG is
    its one segment, so the frame number alone says it."""
    for item in ds.get("ContentSequence", []):
        for reference in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber
        _frame_or_segment_number(item)


def dataset_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_results(
    source: Dataset,
    display: np.ndarray,
    answer: AssessResponse,
    positive_class: str,
    input_size: list[int],
    app_version: str,
    naming: ResultNaming,
    now: dt.datetime | None = None,
) -> DicomResults:
    """The SC, the SEG (when there is a heatmap with a region) and the SR for one assessed image.

    ``source``: the original's header (``read_source_header``); ``display``: the decoded pixels the model saw
    (``DecodedImage.pixels``); ``answer``: the /assess answer for them. A multi-frame original ([F, H, W]
    pixels, an answer with ``frames``) is shown by its deciding frame (``worst_frame``, else the first); its
    saliency peak is referenced on that frame, and it gets no SEG (a single-frame SEG cannot say which frame
    it segments)."""
    now = now or dt.datetime.now()
    multi_frame = display.ndim == 3
    if multi_frame:
        display = display[answer.worst_frame or 0]
    method = answer.heatmap.method if answer.heatmap else "none"
    uids = ResultUids.derive(str(source.SOPInstanceUID), answer.model.name, answer.model.version, method)
    heatmap = None
    if answer.heatmap is not None:
        heatmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.heatmap.png_base64))).convert("L"))
    point = (answer.point.x, answer.point.y) if answer.point else None
    picture = burn_in_banner(
        heatmap_overlay(display, heatmap if heatmap is not None else np.zeros((8, 8), np.uint8), point),
        banner_lines(answer, positive_class),
        reacquire=answer.decision == "reacquire",
    )
    versions = [f"NormGate {app_version}", f"model {answer.model.name} {answer.model.version}"]
    sc = build_secondary_capture(source, picture, answer, uids, naming, now, versions)
    seg = None
    if heatmap is not None and not multi_frame:
        region = saliency_region(heatmap, int(source.Rows), int(source.Columns))
        if region.any():
            try:
                seg = build_segmentation(source, region, answer, uids, naming, now, versions)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                # An original highdicom cannot derive a SEG from (e.g. a cross-sectional image without its
                # Frame of Reference): the SC and the SR still carry the result.
                log.warning(
                    "no SEG for instance %s: %s (the SC and the SR are still made)",
                    source.SOPInstanceUID,
                    type(exc).__name__,
                )
    evidence = [_without_patient_and_study(source), sc] + ([seg] if seg is not None else [])
    sr = build_structured_report(source, answer, positive_class, input_size, uids, naming, evidence, seg, now, versions)
    return DicomResults(secondary_capture=sc, segmentation=seg, structured_report=sr, uids=uids)


def _every_reason_has_a_code() -> None:
    missing = set(get_args(UnassessableReason)) - set(REASON_CODES)
    if missing:  # a new reason in the API contract needs a code here (and a line in docs/integration.md)
        raise RuntimeError(f"no 99NORMGATE code for unassessable reason(s) {sorted(missing)}")


_every_reason_has_a_code()
