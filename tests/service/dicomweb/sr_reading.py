"""Reading NormGate's TID 1500 SR back, independently of the code that writes it: walk the content tree with
pydicom and pick the items by their concept codes (docs/integration.md, "The result instances")."""

from __future__ import annotations

from dataclasses import dataclass, field

import pydicom


def walk(items) -> list[pydicom.Dataset]:
    """Every content item below ``items`` (a ContentSequence), depth first."""
    found = []
    for item in items:
        found.append(item)
        found += walk(item.get("ContentSequence", []))
    return found


def concept(item) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.get("CodeValue") or code.get("LongCodeValue")), str(code.CodingSchemeDesignator)


@dataclass
class SrSummary:
    template: str
    probability: float | None = None
    threshold: float | None = None
    recommendation: str | None = None
    reason: str | None = None
    finding_type: tuple[str, str] | None = None
    peak: list[float] | None = None
    peak_image: str | None = None
    segment_reference: tuple[str, int] | None = None  # (SEG SOP Instance UID, frame)
    groups: list[str] = field(default_factory=list)  # tracking identifiers


def read_sr(sr: pydicom.Dataset) -> SrSummary:
    summary = SrSummary(template=str(sr.ContentTemplateSequence[0].TemplateIdentifier))
    for group in walk(sr.ContentSequence):
        if concept(group) != ("125007", "DCM"):  # Measurement Group
            continue
        items = group.ContentSequence
        by_concept = {concept(i): i for i in items if "ConceptNameCodeSequence" in i}
        tracking = by_concept[("112039", "DCM")].TextValue
        summary.groups.append(tracking)
        if tracking == "NormGate assessment":
            if ("122157", "DCM") in by_concept:
                summary.probability = float(by_concept[("122157", "DCM")].MeasuredValueSequence[0].FloatingPointValue)
            summary.threshold = float(by_concept[("122411", "DCM")].MeasuredValueSequence[0].FloatingPointValue)
            summary.recommendation = str(by_concept[("121075", "DCM")].ConceptCodeSequence[0].CodeValue)
            if ("UNASSESSABLE-WHY", "99NORMGATE") in by_concept:
                summary.reason = str(by_concept[("UNASSESSABLE-WHY", "99NORMGATE")].ConceptCodeSequence[0].CodeValue)
            finding = by_concept[("121071", "DCM")].ConceptCodeSequence[0]
            summary.finding_type = (
                str(finding.get("CodeValue") or finding.get("LongCodeValue")),
                finding.CodingSchemeDesignator,
            )
        elif tracking == "saliency peak":
            region = by_concept[("111030", "DCM")]  # Image Region
            assert region.ValueType == "SCOORD" and region.GraphicType == "POINT"
            summary.peak = [float(v) for v in region.GraphicData]
            summary.peak_image = str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif tracking == "saliency region":
            segment = by_concept[("121214", "DCM")]  # Referenced Segmentation Frame
            reference = segment.ReferencedSOPSequence[0]
            summary.segment_reference = (
                str(reference.ReferencedSOPInstanceUID),
                int(reference.ReferencedFrameNumber),
            )
    return summary
