"""NormGate's answer about one DICOM image, as two DICOM instances a PACS can store and show.

* A **Secondary Capture** (PS3.3 A.8.1, SC Image Storage 1.2.840.10008.5.1.4.1.1.7): the radiograph as the
  model saw it with the saliency heatmap overlaid (the viewer's colour map and transparency ramp), the
  argmax point marked, and a banner above the image with the decision, the probability, the threshold, the
  model and the saliency method burned in. RGB, 8 bits, uncompressed (Explicit VR Little Endian). Derived-image
  attributes: Image Type ``DERIVED\\SECONDARY`` (C.7.6.1.1.2), Derivation Description, Source Image Sequence
  (purpose DCM 121322 "Source image for image processing operation") and Referenced Image Sequence to the
  original, Conversion Type ``WSD`` (C.8.6.1), Burned In Annotation ``YES``.
* A **Comprehensive SR** (PS3.3 A.35.3, Comprehensive SR Storage 1.2.840.10008.5.1.4.1.1.88.33) with a simple
  content tree (no template is claimed; codes from PS3.16 where one fits, else the local coding scheme
  ``99NORMGATE`` that PS3.3 §8.1 reserves for private use)::

      CONTAINER (DCM 111050 "Quality Assessment"), SEPARATE
        CONTAINS  CODE   (DCM 121075 "Recommendation")   = 99NORMGATE REACQUIRE | ACCEPT
        CONTAINS  CODE   (DCM 121071 "Finding")          = SCT 19227008 "Foreign body" | 99NORMGATE <label>
        CONTAINS  NUM    (DCM 122157 "Probability")      = P(positive class), UCUM "1"
        CONTAINS  NUM    (DCM 122411 "Threshold Value")  = the model's decision threshold, UCUM "1"
        CONTAINS  TEXT   (DCM 121077 "Conclusion")       = one sentence
        CONTAINS  TEXT   (DCM 111001 "Algorithm Name")   = model name
        CONTAINS  TEXT   (DCM 111003 "Algorithm Version") = model version
        CONTAINS  TEXT   (DCM 111002 "Algorithm Parameters") = architecture, saliency method, input grid
        CONTAINS  SCOORD (99NORMGATE SALIENCY-PEAK) POINT = saliency argmax
                    SELECTED FROM  IMAGE → the original image
        CONTAINS  IMAGE  (DCM 121324 "Source image")     → the original image
        CONTAINS  IMAGE  (DCM 130404 "Saliency")         → the Secondary Capture

  SCOORD Graphic Data is (column, row) with sub-pixel resolution where (0.0, 0.0) is the top left corner of
  the top left pixel (PS3.3 C.18.6.1.1), so the 0-based pixel (x, y) of the /assess answer is the point
  (x + 0.5, y + 0.5). The NUM items carry the exact binary value in Floating Point Value (0040,A161) next to
  the 16-character Numeric Value (0040,A30A) (C.18.1).

Both copy the Patient and General Study attributes of the original (same Study Instance UID) and get their
own new Series. Their UIDs are derived from the original SOP Instance UID, the model (name, version) and the
saliency method, so sending the same image twice yields the same result instances (a PACS treats the second
as a duplicate instead of piling up copies).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from service.schemas import AssessResponse

__all__ = [
    "COMPREHENSIVE_SR",
    "SC_MAX_SIDE",
    "SECONDARY_CAPTURE",
    "DicomResults",
    "ResultUids",
    "build_results",
    "dataset_bytes",
    "heatmap_overlay",
    "read_source_header",
]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
LOCAL_SCHEME = "99NORMGATE"
MANUFACTURER = "NormGate"
# The Secondary Capture's long side, at most: it is a summary for a glance in the PACS, next to the original
# (which stays the image to diagnose from); 1024 keeps an RGB instance near 3 MB whatever the detector size.
SC_MAX_SIDE = 1024
# Series Numbers of the result series, high so PACS viewers list them after the acquisition series.
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902

# Patient (C.7.1.1), Patient Study (C.7.2.2) and General Study (C.7.2.1) attributes copied from the original;
# the type 2 ones are written empty when the original lacks them.
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
class ResultUids:
    sc_series: str
    sc_instance: str
    sr_series: str
    sr_instance: str


@dataclass(frozen=True)
class DicomResults:
    secondary_capture: Dataset
    structured_report: Dataset
    uids: ResultUids

    def part10_files(self) -> list[bytes]:
        return [dataset_bytes(self.secondary_capture), dataset_bytes(self.structured_report)]


def read_source_header(body: bytes) -> Dataset:
    """The original's attributes without its pixels. Called only after ``decode_image`` accepted the same
    bytes, so the parse is known to succeed (``force`` covers the preamble-less datasets ingest accepts)."""
    return pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True, force=True)


def result_uids(source_sop_instance_uid: str, model_name: str, model_version: str, method: str) -> ResultUids:
    """UIDs that depend only on (original instance, model, method): a re-sent image maps onto the same results."""

    def uid(role: str) -> str:
        return generate_uid(entropy_srcs=["normgate", source_sop_instance_uid, model_name, model_version, method, role])

    return ResultUids(
        sc_series=uid("sc-series"), sc_instance=uid("sc"), sr_series=uid("sr-series"), sr_instance=uid("sr")
    )


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
    return [
        f"NormGate: {decision} ({answer.label})",
        f"P({positive_class}) = {answer.probability:.3f}   threshold {answer.threshold:.3f}",
        f"model {answer.model.name} {answer.model.version} ({answer.model.arch})   "
        f"{answer.heatmap.method if answer.heatmap else 'no heatmap'}",
        "Quality gate output - not for diagnosis",
    ]


# ---------------------------------------------------------------------------------------------------------
# The datasets
# ---------------------------------------------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _from_codedict(code: Code) -> Dataset:
    return _code(code.value, code.scheme_designator, code.meaning)


def _sop_reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def _new_file_dataset(sop_class_uid: str, sop_instance_uid: str, source: Dataset) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # In memory, read from nothing: pydicom accepts None here (no filename, no buffer) but does not annotate it.
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]
    # Copied values (patient name, …) keep their encoding; NormGate's own text is ASCII, valid in any of them.
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            ds[keyword] = source[keyword]
        elif keyword in _TYPE_2:
            setattr(ds, keyword, "")
    return ds


def _stamp(ds: Dataset, now: dt.datetime, software_versions: list[str]) -> None:
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S.%f")
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "NormGate quality gate"
    ds.SoftwareVersions = software_versions
    ds.InstanceNumber = 1


def build_secondary_capture(
    source: Dataset,
    picture: np.ndarray,
    answer: AssessResponse,
    uids: ResultUids,
    now: dt.datetime,
    software_versions: list[str],
) -> FileDataset:
    ds = _new_file_dataset(SECONDARY_CAPTURE, uids.sc_instance, source)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Modality = "OT"  # General Series (C.7.3.1): SC images of a non-acquisition origin
    ds.SeriesInstanceUID = uids.sc_series
    ds.SeriesNumber = SC_SERIES_NUMBER
    ds.SeriesDescription = "NormGate saliency overlay"
    ds.ConversionType = "WSD"  # SC Equipment (C.8.6.1): workstation
    _stamp(ds, now, software_versions)
    ds.PatientOrientation = source.get("PatientOrientation", "") or ""
    ds.BurnedInAnnotation = "YES"
    method = answer.heatmap.method if answer.heatmap else "none"
    ds.DerivationDescription = (
        f"NormGate {answer.model.name} {answer.model.version}: {method} saliency heatmap overlaid on the "
        f"windowed original, argmax marked, decision {answer.decision} (P={answer.probability:.4f}) burned in"
    )[:1024]
    source_ref = _sop_reference(str(source.SOPClassUID), str(source.SOPInstanceUID))
    source_ref.PurposeOfReferenceCodeSequence = [_from_codedict(codes.DCM.SourceImageForImageProcessingOperation)]
    ds.SourceImageSequence = [source_ref]
    ds.ReferencedImageSequence = [_sop_reference(str(source.SOPClassUID), str(source.SOPInstanceUID))]
    rows, columns, _ = picture.shape
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(picture, dtype=np.uint8).tobytes()
    return ds


def _content_item(relationship: str, value_type: str, concept: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [concept]
    return item


def _text(concept: Dataset, text: str) -> Dataset:
    item = _content_item("CONTAINS", "TEXT", concept)
    item.TextValue = text
    return item


def _coded(concept: Dataset, value: Dataset) -> Dataset:
    item = _content_item("CONTAINS", "CODE", concept)
    item.ConceptCodeSequence = [value]
    return item


def _numeric(concept: Dataset, value: float) -> Dataset:
    measured = Dataset()
    measured.NumericValue = _decimal_string(value)
    measured.FloatingPointValue = float(value)
    measured.MeasurementUnitsCodeSequence = [_from_codedict(codes.UCUM.NoUnits)]
    item = _content_item("CONTAINS", "NUM", concept)
    item.MeasuredValueSequence = [measured]
    return item


def _decimal_string(value: float) -> str:
    """The closest DS (at most 16 characters, PS3.5 6.2) to ``value``."""
    for digits in range(15, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return "0"


def _image(relationship: str, concept: Dataset | None, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = "IMAGE"
    if concept is not None:
        item.ConceptNameCodeSequence = [concept]
    item.ReferencedSOPSequence = [_sop_reference(sop_class_uid, sop_instance_uid)]
    return item


def _finding_code(label: str) -> Dataset:
    if label == "foreign_object":
        return _from_codedict(codes.SCT.ForeignBody)
    return _code(label.upper()[:16], LOCAL_SCHEME, label.replace("_", " "))


def _evidence(study_uid: str, series_uid: str, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """An item of a Hierarchical SOP Instance Reference Macro (C.17.2.1): study → series → instance."""
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedSOPSequence = [_sop_reference(sop_class_uid, sop_instance_uid)]
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = [series]
    return study


def build_structured_report(
    source: Dataset,
    answer: AssessResponse,
    positive_class: str,
    input_size: list[int],
    uids: ResultUids,
    now: dt.datetime,
    software_versions: list[str],
) -> FileDataset:
    ds = _new_file_dataset(COMPREHENSIVE_SR, uids.sr_instance, source)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = uids.sr_series
    ds.SeriesNumber = SR_SERIES_NUMBER
    ds.SeriesDescription = "NormGate quality assessment"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()  # type 2, no MPPS known
    _stamp(ds, now, software_versions)
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()  # type 2
    source_class, source_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
    study_uid = str(source.StudyInstanceUID)
    # The original is the evidence of the requested procedure; the SC is other evidence this report cites.
    ds.CurrentRequestedProcedureEvidenceSequence = [
        _evidence(study_uid, str(source.SeriesInstanceUID), source_class, source_instance)
    ]
    ds.PertinentOtherEvidenceSequence = [_evidence(study_uid, uids.sc_series, SECONDARY_CAPTURE, uids.sc_instance)]

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_from_codedict(codes.DCM.QualityAssessment)]
    ds.ContinuityOfContent = "SEPARATE"
    reacquire = answer.decision == "reacquire"
    if answer.decision == "unassessable":
        recommendation = _code("UNASSESSABLE", LOCAL_SCHEME, "Image cannot be assessed")
        conclusion = f"unassessable: {answer.reason}"
    else:
        recommendation = (
            _code("REACQUIRE", LOCAL_SCHEME, "Reacquire image")
            if reacquire
            else _code("ACCEPT", LOCAL_SCHEME, "Accept image")
        )
        relation = ">=" if reacquire else "<"
        conclusion = (
            f"{answer.decision}: P({positive_class}) = {answer.probability:.4f} {relation} threshold "
            f"{answer.threshold:g}"
        )
    method = answer.heatmap.method if answer.heatmap else "none"
    content = [_coded(_from_codedict(codes.DCM.Recommendation), recommendation)]
    if answer.label is not None:
        content.append(_coded(_from_codedict(codes.DCM.Finding), _finding_code(answer.label)))
    if answer.probability is not None:
        content.append(_numeric(_from_codedict(codes.DCM.Probability), answer.probability))
    content += [
        _numeric(_from_codedict(codes.DCM.ThresholdValue), answer.threshold),
        _text(_from_codedict(codes.DCM.Conclusion), conclusion),
        _text(_from_codedict(codes.DCM.AlgorithmName), answer.model.name),
        _text(_from_codedict(codes.DCM.AlgorithmVersion), answer.model.version),
        _text(
            _from_codedict(codes.DCM.AlgorithmParameters),
            f"arch={answer.model.arch}; saliency={method}; input={input_size[0]}x{input_size[1]}; "
            f"positive_class={positive_class}",
        ),
    ]
    if answer.point is not None:
        peak = _content_item("CONTAINS", "SCOORD", _code("SALIENCY-PEAK", LOCAL_SCHEME, "Saliency map maximum"))
        peak.GraphicType = "POINT"
        peak.GraphicData = [answer.point.x + 0.5, answer.point.y + 0.5]
        peak.ContentSequence = [_image("SELECTED FROM", None, source_class, source_instance)]
        content.append(peak)
    content.append(_image("CONTAINS", _from_codedict(codes.DCM.SourceImage), source_class, source_instance))
    content.append(_image("CONTAINS", _from_codedict(codes.DCM.Saliency), SECONDARY_CAPTURE, uids.sc_instance))
    ds.ContentSequence = content
    return ds


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
    now: dt.datetime | None = None,
) -> DicomResults:
    """The Secondary Capture and the SR for one assessed image.

    ``source``: the original's header (``read_source_header``); ``display``: the decoded pixels the model saw
    (``DecodedImage.pixels``); ``answer``: the /assess answer for them, with its heatmap."""
    now = now or dt.datetime.now()
    method = answer.heatmap.method if answer.heatmap else "none"
    uids = result_uids(str(source.SOPInstanceUID), answer.model.name, answer.model.version, method)
    heatmap = None
    if answer.heatmap is not None:
        heatmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.heatmap.png_base64))).convert("L"))
    else:
        heatmap = np.zeros((8, 8), dtype=np.uint8)
    point = (answer.point.x, answer.point.y) if answer.point else None
    picture = burn_in_banner(
        heatmap_overlay(display, heatmap, point),
        banner_lines(answer, positive_class),
        reacquire=answer.decision == "reacquire",
    )
    versions = [f"NormGate {app_version}", f"model {answer.model.name} {answer.model.version}"]
    sc = build_secondary_capture(source, picture, answer, uids, now, versions)
    sr = build_structured_report(source, answer, positive_class, input_size, uids, now, versions)
    return DicomResults(secondary_capture=sc, structured_report=sr, uids=uids)
