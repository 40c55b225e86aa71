"""The result objects (service/dicomweb/results.py) of every kind, checked by DICOM's own validators.

Each kind — reacquire and accept with a heatmap (SC + SEG + SR), unassessable without one (SC + SR), a class
label longer than a code value may be, an MR original — is built from a synthetic original and an /assess-shaped
answer, written as Part 10 and run through ``dciodvfy`` (dicom3tools: no errors; the warnings that remain are the
ones docs/integration.md lists with their reasons) and, for the SR, ``dsr2xml`` (dcmtk). The content is read
back with pydicom (tests/service/dicomweb/sr_reading.py), never with the code under test.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import get_args

import numpy as np
import pydicom
import pytest
from PIL import Image

from models.metadata import ModelMetadata, ResultSeries
from service.dicomweb.results import (
    DECISION_CODES,
    REASON_CODES,
    ResultNaming,
    build_results,
    dataset_bytes,
    read_source_header,
)
from service.schemas import AssessResponse, Point, UnassessableReason
from tests.helpers import REPO
from tests.service.dicom_factory import chest_like, dx_instance
from tests.service.dicomweb.sr_reading import read_sr

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
NAMING = ResultNaming(9100, "NormGate default")
# What dciodvfy still says about valid result objects, by IOD; docs/integration.md ("Validation") gives the reasons.
KNOWN_WARNINGS = {
    "Unrecognized defined term <99NORMGATE> for value 1 of attribute <Coding Scheme Designator>",
    "is only permitted to be empty when actually unknown; should be absent (not empty) if an unpaired body part, "
    "and have a value if a paired body part - attribute <Laterality>",
}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {name} is missing (.ci/apt-packages.txt installs it)")
    pytest.skip(f"{name} not installed (Debian dicom3tools / dcmtk; .ci/run installs them)")


def _heatmap(size: int = 32, peak: tuple[int, int] = (20, 10)) -> dict:
    rows, cols = np.mgrid[0:size, 0:size]
    levels = np.exp(-((rows - peak[1]) ** 2 + (cols - peak[0]) ** 2) / 20.0)
    buffer = io.BytesIO()
    Image.fromarray(np.rint(levels / levels.max() * 255).astype(np.uint8)).save(buffer, format="PNG")
    return {
        "method": "normgrad-conv1x1-combined",
        "width": size,
        "height": size,
        "png_base64": base64.b64encode(buffer.getvalue()).decode(),
    }


def _answer(
    decision: str,
    *,
    width: int,
    height: int,
    reason: str | None = None,
    label: str = "foreign_object",
    heatmap: bool = True,
) -> AssessResponse:
    computed = decision != "unassessable"
    return AssessResponse(
        request_id="r1",
        assessment_id="r1",
        model={"name": "default", "version": "1.0.0", "arch": "resnet18"},
        label=label if computed else None,
        probability=(0.93 if decision == "reacquire" else 0.12) if computed else None,
        threshold=0.5,
        decision=decision,
        reason=reason,
        point={"x": round(width * 0.6), "y": round(height * 0.3)} if heatmap else None,
        image={"width": width, "height": height},
        heatmap=_heatmap(peak=(19, 10)) if heatmap else None,
        timings_ms={"queue": 1.0, "compute": 2.0, "total": 3.0},
    )


def _source(**kw) -> bytes:
    return dx_instance(chest_like(96, 80, seed=3, bright_object=(30, 48)), **kw)


def _mr_source() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(_source()))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE
    ds.Modality = "MR"
    ds.SeriesDescription = "cine 4CH"
    del ds.PresentationIntentType
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-40.0, -48.0, 12.5]
    ds.PixelSpacing = [1.5, 1.5]
    ds.SliceThickness = 8.0
    del ds.PatientOrientation
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


KINDS = {
    "reacquire": (
        lambda: _source(body_part="CHEST"),
        lambda: _answer("reacquire", width=80, height=96),
        "foreign_object",
    ),
    "accept": (
        lambda: _source(),
        lambda: _answer("accept", width=80, height=96, label="no_foreign_object"),
        "foreign_object",
    ),
    "unassessable": (
        lambda: _source(body_part="CHEST"),
        lambda: _answer("unassessable", width=80, height=96, reason="low_dynamic_range", heatmap=False),
        "foreign_object",
    ),
    "long_label": (
        lambda: _source(),
        lambda: _answer("reacquire", width=80, height=96, label="left_ventricular_outflow_tract_visible"),
        "left_ventricular_outflow_tract_visible",
    ),
    "mr": (_mr_source, lambda: _answer("accept", width=80, height=96, label="lvot_absent"), "lvot_visible"),
}


def _build(kind: str):
    make_source, make_answer, positive = KINDS[kind]
    body = make_source()
    display = np.asarray(chest_like(96, 80, seed=3), dtype=np.float32) / 4095.0
    results = build_results(read_source_header(body), display, make_answer(), positive, [32, 32], "0.1.0", NAMING)
    return pydicom.dcmread(io.BytesIO(body)), results


@pytest.fixture(scope="module", params=sorted(KINDS))
def built(request, tmp_path_factory):
    original, results = _build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    paths = {}
    for ds in results.datasets:
        paths[str(ds.Modality)] = folder / f"{ds.Modality}.dcm"
        paths[str(ds.Modality)].write_bytes(dataset_bytes(ds))
    return request.param, original, results, paths


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    run = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line.removeprefix("Warning - ") for line in lines if line.startswith("Warning")]
    return errors, warnings


def test_dciodvfy_finds_no_errors_and_only_the_documented_warnings(built):
    kind, _, _results, paths = built
    expected = {"OT", "SR"} | ({"SEG"} if kind != "unassessable" else set())
    assert set(paths) == expected
    for modality, path in paths.items():
        errors, warnings = _dciodvfy(path)
        assert errors == [], f"{kind} {modality}: {errors}"
        assert set(warnings) <= KNOWN_WARNINGS, f"{kind} {modality}: {set(warnings) - KNOWN_WARNINGS}"


def test_the_documented_warnings_are_the_known_ones():
    text = (REPO / "docs" / "integration.md").read_text()
    section = text[text.index("### Validation") :]
    for warning in KNOWN_WARNINGS:
        assert warning in section, f"docs/integration.md, Validation, does not list: {warning}"


def test_dsr2xml_renders_the_sr(built, tmp_path):
    kind, _, results, paths = built
    run = subprocess.run([_tool("dsr2xml"), str(paths["SR"])], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    document = ElementTree.fromstring(run.stdout.encode("latin-1", errors="replace"))
    meanings = {element.text for element in document.iter("meaning")}
    assert "Imaging Measurement Report" in meanings and "Recommendation" in meanings
    if results.structured_report and kind != "unassessable":
        assert "Probability" in meanings and "Image Region" in meanings


def test_sr_content_for_every_kind(built):
    kind, original, results, _ = built
    summary = read_sr(results.structured_report)
    answer = KINDS[kind][1]()
    assert summary.template == "1500"
    assert summary.recommendation == DECISION_CODES[answer.decision].value
    assert summary.threshold == 0.5
    if kind == "unassessable":
        assert summary.probability is None and summary.peak is None and summary.segment_reference is None
        assert summary.reason == REASON_CODES["low_dynamic_range"].value == "LOW-DYN-RANGE"
        assert summary.groups == ["NormGate assessment"]
    else:
        assert summary.probability == answer.probability and summary.reason is None
        assert summary.peak == [answer.point.x + 0.5, answer.point.y + 0.5]
        assert summary.peak_image == original.SOPInstanceUID
        assert summary.segment_reference == (results.segmentation.SOPInstanceUID, 1)
    if kind == "long_label":
        finding = next(
            item.ConceptCodeSequence[0]
            for item in results.structured_report.ContentSequence[-1].ContentSequence[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "121071"
        )
        # 38 characters: Long Code Value, never a cut-down Code Value.
        assert "CodeValue" not in finding and finding.LongCodeValue == "LEFT_VENTRICULAR_OUTFLOW_TRACT_VISIBLE"
    procedure = {"mr": "113091000"}.get(kind, "168537006")
    assert any(
        item.ConceptNameCodeSequence[0].CodeValue == "121058" and item.ConceptCodeSequence[0].CodeValue == procedure
        for item in results.structured_report.ContentSequence
    )


def test_every_code_value_fits_sh_and_every_reason_has_one():
    assert set(REASON_CODES) == set(get_args(UnassessableReason))
    for code in [*DECISION_CODES.values(), *REASON_CODES.values()]:
        assert 1 <= len(code.value) <= 16 and code.scheme_designator == "99NORMGATE", code
    assert len({c.value for c in REASON_CODES.values()}) == len(REASON_CODES)


def test_laterality_and_patient_orientation_follow_the_original():
    cases = {
        "image laterality L": ({"ImageLaterality": "L"}, "L"),
        "chest, no laterality": ({"BodyPartExamined": "CHEST"}, None),
        "nothing known": ({}, ""),
    }
    for name, (attributes, expected) in cases.items():
        ds = pydicom.dcmread(io.BytesIO(_source()))
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        results = build_results(
            ds,
            np.zeros((96, 80), np.float32),
            _answer("accept", width=80, height=96, label="no_foreign_object"),
            "foreign_object",
            [32, 32],
            "0.1.0",
            NAMING,
        )
        sc, seg = results.secondary_capture, results.segmentation
        if expected is None:
            assert "Laterality" not in sc and "Laterality" not in seg, name
        else:
            assert sc.Laterality == expected, name
            assert seg.get("Laterality", "") == (expected or ""), name
        assert list(sc.PatientOrientation) == ["L", "F"] == list(seg.PatientOrientation), name


def test_patient_values_highdicom_would_refuse_are_copied_verbatim():
    ds = pydicom.dcmread(io.BytesIO(_source()))
    ds.PatientBirthDate = "03/02/1961"  # not a DA
    ds.PatientName = "DOE JOHN"  # no component separator
    results = build_results(
        ds,
        np.zeros((96, 80), np.float32),
        _answer("reacquire", width=80, height=96),
        "foreign_object",
        [32, 32],
        "0.1.0",
        NAMING,
    )
    for result in results.datasets:
        assert result.PatientBirthDate == "03/02/1961" and str(result.PatientName) == "DOE JOHN"


def test_series_numbers_and_descriptions_per_model():
    named = ModelMetadata(
        name="cmr-lvot",
        version="1",
        arch="resnet18",
        input_size=[64, 64],
        results=ResultSeries(series_number=9300, series_description="LVOT gate"),
    )
    naming = ResultNaming.for_model(named)
    assert (naming.series_number, naming.series_description) == (9300, "LVOT gate")
    defaults = {
        ResultNaming.for_model(ModelMetadata(name=n, version="1", arch="resnet18", input_size=[64, 64]))
        for n in ("default", "effnet", "cmr")
    }
    assert len({d.series_number for d in defaults}) == 3 and all(9000 <= d.series_number <= 9980 for d in defaults)
    assert {d.series_description for d in defaults} == {"NormGate default", "NormGate effnet", "NormGate cmr"}
    _, results = _build("reacquire")
    numbers = [int(ds.SeriesNumber) for ds in results.datasets]
    assert numbers == [9100, 9101, 9102]
    assert [ds.SeriesDescription for ds in results.datasets] == [
        "NormGate default overlay",
        "NormGate default saliency region",
        "NormGate default report",
    ]
    assert len(ResultNaming(1, "x" * 64).describe("saliency region")) == 64


def test_the_same_image_gives_the_same_uids():
    first, second = _build("reacquire")[1], _build("reacquire")[1]
    # _source() makes a new original each time: the UIDs follow it
    assert first.uids != second.uids
    body = _source()
    again = [
        build_results(
            read_source_header(body),
            np.zeros((96, 80), np.float32),
            _answer("reacquire", width=80, height=96),
            "foreign_object",
            [32, 32],
            "0.1.0",
            NAMING,
        ).uids
        for _ in range(2)
    ]
    assert again[0] == again[1]


# ---------------------------------------------------------------------------------------------------------
# A series (a cine stored frame by frame) and a multi-frame original
# ---------------------------------------------------------------------------------------------------------


def _series_built(tmp_path: Path):
    from service.dicomweb.results import build_series_report
    from service.dicomweb.series import series_answer
    from tests.service.dicom_factory import cine_frames, mr_series

    sources = [read_source_header(body) for body in mr_series(cine_frames(4, 40, 48, seed=8))]
    probabilities = [0.2, 0.81, None, 0.64]
    answers = []
    for index, probability in enumerate(probabilities):
        if probability is None:
            answer = _answer("unassessable", width=48, height=40, reason="blank", heatmap=False)
        else:
            decision = "reacquire" if probability >= 0.5 else "accept"
            answer = _answer(decision, width=48, height=40, label="lvot" if decision == "reacquire" else "no_lvot")
            answer.probability = probability
            answer.point = Point(x=10 + index, y=20)
        answers.append(answer)
    series, frames = series_answer(list(zip(sources, answers)), "r-series", 0.0)
    report = build_series_report(frames, series, "normgrad-conv1x1-combined", "lvot", [48, 48], "0.1.0", NAMING)
    path = tmp_path / "series-sr.dcm"
    path.write_bytes(dataset_bytes(report))
    return sources, series, report, path


def _groups(sr: pydicom.Dataset) -> dict[str, dict]:
    from tests.service.dicomweb.sr_reading import concept, walk

    groups = {}
    for group in walk(sr.ContentSequence):
        if concept(group) != ("125007", "DCM"):
            continue
        by_concept = {concept(i): i for i in group.ContentSequence if "ConceptNameCodeSequence" in i}
        entry: dict = {"sources": []}
        for item in group.ContentSequence:
            if item.ValueType == "IMAGE":
                entry["sources"].append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        if ("122157", "DCM") in by_concept:
            entry["probability"] = float(by_concept[("122157", "DCM")].MeasuredValueSequence[0].FloatingPointValue)
        if ("121075", "DCM") in by_concept:
            entry["recommendation"] = str(by_concept[("121075", "DCM")].ConceptCodeSequence[0].CodeValue)
        if ("UNASSESSABLE-WHY", "99NORMGATE") in by_concept:
            entry["reason"] = str(by_concept[("UNASSESSABLE-WHY", "99NORMGATE")].ConceptCodeSequence[0].CodeValue)
        if ("111030", "DCM") in by_concept:
            region = by_concept[("111030", "DCM")]
            entry["point"] = [float(v) for v in region.GraphicData]
            entry["sources"].append(str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        groups[str(by_concept[("112039", "DCM")].TextValue)] = entry
    return groups


def test_series_report_references_every_frame_and_passes_dciodvfy(tmp_path):
    sources, series, report, path = _series_built(tmp_path)
    errors, warnings = _dciodvfy(path)
    assert errors == [] and set(warnings) <= KNOWN_WARNINGS, (errors, warnings)
    run = subprocess.run([_tool("dsr2xml"), str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    uids = [str(s.SOPInstanceUID) for s in sources]
    # The rule: frame 2 (0.81) reaches the threshold, so the series is reacquired and frame 2 decided it.
    assert (series.decision, series.worst_frame, series.probability) == ("reacquire", 1, 0.81)
    groups = _groups(report)
    assert list(groups) == [
        "NormGate series assessment",
        "frame 1",
        "frame 2",
        "frame 3",
        "frame 4",
        "saliency peak of frame 2",
    ]
    top = groups["NormGate series assessment"]
    assert top["sources"] == uids and top["probability"] == 0.81 and top["recommendation"] == "REACQUIRE"
    assert [groups[f"frame {n}"]["sources"] for n in range(1, 5)] == [[u] for u in uids]
    assert [groups[f"frame {n}"].get("probability") for n in range(1, 5)] == [0.2, 0.81, None, 0.64]
    assert [groups[f"frame {n}"]["recommendation"] for n in range(1, 5)] == [
        "ACCEPT",
        "REACQUIRE",
        "UNASSESSABLE",
        "REACQUIRE",
    ]
    assert groups["frame 3"]["reason"] == "BLANK"
    assert groups["saliency peak of frame 2"] == {"sources": [uids[1]], "point": [11.5, 20.5]}
    library = [
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for group in report.ContentSequence
        if group.ConceptNameCodeSequence[0].CodeValue == "111028"  # Image Library
        for entry in group.ContentSequence
        for item in [entry, *entry.get("ContentSequence", [])]
        if item.ValueType == "IMAGE"
    ]
    assert library == uids
    assert report.SeriesNumber == NAMING.series_number + 3
    assert report.SeriesDescription == "NormGate default series report"
    assert report.StudyInstanceUID == sources[0].StudyInstanceUID
    # The same frames give the same report UID; one frame more, a new report.
    from service.dicomweb.results import series_report_uids

    series_uid = str(sources[0].SeriesInstanceUID)
    method = "normgrad-conv1x1-combined"
    same = series_report_uids(series_uid, list(reversed(uids)), "default", "1.0.0", method)
    assert same == (str(report.SeriesInstanceUID), str(report.SOPInstanceUID))
    grown = series_report_uids(series_uid, [*uids, "1.2.3"], "default", "1.0.0", method)
    assert grown[0] == same[0] and grown[1] != same[1]


def test_a_multi_frame_original_gets_an_sc_of_its_deciding_frame_and_an_sr_pointing_at_it(tmp_path):
    from tests.service.dicom_factory import cine_frames, enhanced_mr

    frames = cine_frames(3, 40, 48, seed=9)
    body = enhanced_mr(frames)
    answer = _answer("reacquire", width=48, height=40, label="lvot")
    answer.frames = [
        {"index": i, "probability": p, "decision": "reacquire" if p >= 0.5 else "accept"}
        for i, p in enumerate((0.1, 0.2, 0.93))
    ]
    answer.worst_frame = 2
    display = frames.astype(np.float32) / 4095.0
    results = build_results(read_source_header(body), display, answer, "lvot", [48, 48], "0.1.0", NAMING)
    assert results.segmentation is None
    for ds in results.datasets:
        path = tmp_path / f"{ds.Modality}.dcm"
        path.write_bytes(dataset_bytes(ds))
        errors, warnings = _dciodvfy(path)
        assert errors == [] and set(warnings) <= KNOWN_WARNINGS, (ds.Modality, errors, warnings)
    summary = read_sr(results.structured_report)
    assert summary.peak == [answer.point.x + 0.5, answer.point.y + 0.5]
    peak_group = [g for g in walk_items(results.structured_report) if g.get("ReferencedFrameNumber") is not None]
    assert [int(g.ReferencedFrameNumber) for g in peak_group] == [3]
    # The SC shows frame 3 (the deciding one): its grey pixels below the banner follow that frame, not frame 1.
    sc = results.secondary_capture.pixel_array.astype(float).mean(axis=2)
    image = sc[-40:, :]
    corr = [np.corrcoef(image.ravel(), (f / 4095.0).ravel())[0, 1] for f in frames]
    assert int(np.argmax(corr)) == 2


def walk_items(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    from tests.service.dicomweb.sr_reading import walk

    return [ref for item in walk(sr.ContentSequence) for ref in item.get("ReferencedSOPSequence", [])]
