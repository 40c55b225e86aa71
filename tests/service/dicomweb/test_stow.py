"""POST /dicomweb/studies (STOW-RS) against the real app and a tiny checkpoint; the result instances; the push
client against a scripted transport and a real loopback HTTP server.

Expected assessment values come from POST /assess with the same bytes (the route must reuse that path), and
the DICOM results are checked attribute by attribute, by re-reading them with pydicom and, where dcmtk is
installed, with ``dsrdump``/``dcmdump``.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import shutil
import subprocess
import threading
import time

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.uid import generate_uid

from service.app import create_app
from service.dicomweb.multipart import (
    FailureReason,
    build_multipart_related,
    parse_multipart_related,
    store_instances_response,
    stow_boundary,
    stow_status,
)
from service.errors import ApiError
from tests.helpers import png_bytes, settings_for, wait_ready_sync
from tests.service.dicom_factory import DX_FOR_PRESENTATION, PHI_ID, PHI_NAME, chest_like, dx_instance
from tests.service.dicomweb.sr_reading import read_sr

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
REFERENCED, FAILED, REASON = "00081199", "00081198", "00081197"


# ---------------------------------------------------------------------------------------------------------
# The multipart/related parser and the response builder
# ---------------------------------------------------------------------------------------------------------


def test_multipart_round_trip_with_preamble_epilogue_and_headerless_part():
    body, content_type = build_multipart_related([b"first\r\n--not-the-boundary", b"\x00" * 10], "b0und")
    assert stow_boundary(content_type) == "b0und"
    parts = parse_multipart_related(b"preamble text\r\n" + body + b"epilogue", "b0und", max_parts=4)
    assert [p.body for p in parts] == [b"first\r\n--not-the-boundary", b"\x00" * 10]
    assert [p.content_type for p in parts] == ["application/dicom"] * 2
    headerless = parse_multipart_related(b"--x\r\n\r\nDATA\r\n--x--", "x", max_parts=1)
    assert headerless[0].body == b"DATA" and headerless[0].content_type is None


@pytest.mark.parametrize(
    "content_type, status",
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=a', 415),
        ("multipart/form-data; boundary=a", 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
        ('multipart/related; type="application/dicom"; boundary=""', 400),
    ],
)
def test_content_type_refusals(content_type, status):
    with pytest.raises(ApiError) as refused:
        stow_boundary(content_type)
    assert refused.value.status == status


def test_boundary_parameter_with_quotes_and_semicolon():
    assert stow_boundary('Multipart/Related; boundary="a;b c"; type="application/dicom"') == "a;b c"


def test_orthancs_73_character_boundary_is_accepted():
    # Orthanc's DICOMweb plugin joins two UUIDs: longer than RFC 2046's 70 characters.
    boundary = "a45db3af-24d7-49c6-81b1-69eb8b16d03c-a45db3af-24d7-49c6-81b1-69eb8b16d03c"
    assert stow_boundary(f'multipart/related; type="application/dicom"; boundary={boundary}') == boundary
    with pytest.raises(ApiError):
        stow_boundary(f'multipart/related; type="application/dicom"; boundary={"x" * 201}')


@pytest.mark.parametrize(
    "body, sentence",
    [
        (b"no delimiter here", "does not contain the boundary"),
        (b"--x\r\nContent-Type: application/dicom\r\n\r\nDATA", "not closed by a boundary"),
        (b"--x\r\nContent-Type application/dicom\r\n\r\nDATA\r\n--x--", "no colon"),
        (b"--x--", "no parts"),
    ],
)
def test_malformed_bodies_are_400(body, sentence):
    with pytest.raises(ApiError) as refused:
        parse_multipart_related(body, "x", max_parts=4)
    assert refused.value.status == 400 and sentence in refused.value.detail


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), max_size=4), st.binary(max_size=60), st.integers(0, 200))
def test_parser_never_raises_anything_but_api_errors(payloads, noise, cut):
    """Random parts round-trip; random damage (noise spliced in, truncation) is a 400/413, never a crash."""
    payloads = [p for p in payloads if b"--fz" not in p]
    if payloads:
        body, _ = build_multipart_related(payloads, "fz")
        assert [p.body for p in parse_multipart_related(body, "fz", max_parts=8)] == payloads
    else:
        body = b"--fz--"
    damaged = body[:cut] + noise + body[cut:]
    for candidate in (damaged, body[:cut], noise):
        try:
            parts = parse_multipart_related(candidate, "fz", max_parts=8)
        except ApiError as refused:
            assert refused.status in (400, 413)
        else:
            assert 1 <= len(parts) <= 8 and sum(len(p.body) for p in parts) <= len(candidate)


def test_part_count_limit_is_413():
    body, _ = build_multipart_related([b"a", b"b", b"c"], "x")
    assert len(parse_multipart_related(body, "x", max_parts=3)) == 3
    with pytest.raises(ApiError) as refused:
        parse_multipart_related(body, "x", max_parts=2)
    assert refused.value.status == 413


# ---------------------------------------------------------------------------------------------------------
# The route
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(models_dir):
    app = create_app(settings_for(models_dir, dicomweb_max_instances=6, max_batch_wait_ms=50))
    with TestClient(app) as test_client:
        wait_ready_sync(test_client)
        yield test_client


def stow(client, instances, study=None, accept="application/json", part_type="application/dicom", **params):
    body, content_type = build_multipart_related(instances, f"bnd{generate_uid()[-12:]}")
    if part_type != "application/dicom":
        body = body.replace(b"Content-Type: application/dicom", f"Content-Type: {part_type}".encode())
    url = "/dicomweb/studies" + (f"/{study}" if study else "")
    headers = {"content-type": content_type}
    if accept:
        headers["accept"] = accept
    return client.post(url, content=body, headers=headers, params=params)


def uid_values(item, tag):
    return item[tag].get("Value", [None])[0]


def retrieve(client, url: str) -> pydicom.Dataset:
    answer = client.get(url)
    assert answer.status_code == 200
    boundary = stow_boundary(answer.headers["content-type"])
    [part] = parse_multipart_related(answer.content, boundary, max_parts=1)
    assert part.content_type == "application/dicom"
    return pydicom.dcmread(io.BytesIO(part.body))


@pytest.fixture(scope="module")
def stored_pair(client):
    """Two radiographs of one study (MONOCHROME1 and MONOCHROME2 of the same attenuation), stored together."""
    study = generate_uid()
    attenuation = chest_like(96, 80, seed=3, bright_object=(30, 55))
    files = [
        dx_instance(attenuation, photometric="MONOCHROME1", study_uid=study),
        dx_instance(attenuation, photometric="MONOCHROME2", study_uid=study),
    ]
    answer = stow(client, files, study=study)
    assert answer.status_code == 200, answer.text
    return study, files, answer.json()


def test_every_instance_is_assessed_exactly_like_assess(client, stored_pair):
    _, files, answer = stored_pair
    referenced = answer["stow"][REFERENCED]["Value"]
    assert FAILED not in answer["stow"]
    assert [uid_values(i, "00081155") for i in referenced] == [
        pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files
    ]
    assert {uid_values(i, "00081150") for i in referenced} == {DX_FOR_PRESENTATION}
    for result, body in zip(answer["results"], files):
        direct = client.post("/assess", content=body, headers={"content-type": "application/dicom"}).json()
        assessed = result["assessment"]
        for key in ("model", "label", "probability", "threshold", "decision", "point", "image", "heatmap"):
            assert assessed[key] == direct[key], key
        assert result["status"] == "assessed" and result["push"] == "not_configured"
    # MONOCHROME1 and MONOCHROME2 of the same attenuation are the same image to the model.
    first, second = (r["assessment"] for r in answer["results"])
    assert first["probability"] == second["probability"] and first["point"] == second["point"]


def test_default_accept_is_the_pure_store_instances_response(client, stored_pair):
    study, files, wrapped = stored_pair
    for accept in (None, "application/dicom+json", "*/*"):
        answer = stow(client, files[:1], study=study, accept=accept)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/dicom+json")
        body = answer.json()
        assert set(body) == {REFERENCED}
        assert body[REFERENCED]["Value"][0] == wrapped["stow"][REFERENCED]["Value"][0]
    assert stow(client, files[:1], accept="application/dicom+xml").status_code == 406


def test_secondary_capture_attributes_and_pixels(client, stored_pair):
    study, files, answer = stored_pair
    original = pydicom.dcmread(io.BytesIO(files[0]))
    result = answer["results"][0]
    sc = retrieve(client, result["secondary_capture"]["retrieve_url"])
    assert sc.SOPClassUID == SC_CLASS and sc.SOPInstanceUID == result["secondary_capture"]["sop_instance_uid"]
    assert sc.StudyInstanceUID == study
    assert sc.SeriesInstanceUID not in (original.SeriesInstanceUID, result["structured_report"]["series_instance_uid"])
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"] and sc.ConversionType == "WSD" and sc.Modality == "OT"
    assert sc.BurnedInAnnotation == "YES" and "normgrad-conv1x1-combined" in sc.DerivationDescription
    for sequence in (sc.SourceImageSequence, sc.ReferencedImageSequence):
        assert sequence[0].ReferencedSOPClassUID == DX_FOR_PRESENTATION
        assert sequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert sc.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyDate",
        "StudyID",
        "ReferringPhysicianName",
        "SpecificCharacterSet",
    ):
        assert sc[keyword].value == original[keyword].value, keyword
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated) == (3, "RGB", 8)
    pixels = sc.pixel_array
    # The image part keeps the original's size (under 1024 px) below the burned-in banner.
    assert pixels.shape[1] == 80 and pixels.shape[0] > 96 and pixels.shape[2] == 3
    banner = pixels[: pixels.shape[0] - 96]
    assert banner[..., 0].max() > 200  # the red REACQUIRE / green ACCEPT line is drawn
    image = pixels[-96:].astype(int)
    assert np.abs(image[..., 0] - image[..., 2]).max() > 30  # the heatmap colours part of the image


def test_structured_report_is_a_tid_1500_measurement_report(client, stored_pair):
    study, files, answer = stored_pair
    original = pydicom.dcmread(io.BytesIO(files[0]))
    result = answer["results"][0]
    assessed = result["assessment"]
    sr = retrieve(client, result["structured_report"]["retrieve_url"])
    assert sr.SOPClassUID == SR_CLASS and sr.Modality == "SR" and sr.StudyInstanceUID == study
    assert sr.PatientName == original.PatientName and sr.CompletionFlag == "COMPLETE"
    assert sr.ValueType == "CONTAINER" and sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    summary = read_sr(sr)
    assert summary.template == "1500"
    assert summary.groups == ["NormGate assessment", "saliency peak", "saliency region"]
    assert summary.probability == assessed["probability"] and summary.threshold == assessed["threshold"]
    assert summary.recommendation == assessed["decision"].upper() and summary.reason is None
    assert summary.finding_type == ("19227008", "SCT")
    assert summary.peak == [assessed["point"]["x"] + 0.5, assessed["point"]["y"] + 0.5]
    assert summary.peak_image == original.SOPInstanceUID
    assert summary.segment_reference == (result["segmentation"]["sop_instance_uid"], 1)
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99NORMGATE"
    evidence = {
        ref.ReferencedSOPInstanceUID
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {
        original.SOPInstanceUID,
        result["secondary_capture"]["sop_instance_uid"],
        result["segmentation"]["sop_instance_uid"],
    }


def test_segmentation_marks_the_saliency_region_on_the_original(client, stored_pair):
    _, files, answer = stored_pair
    original = pydicom.dcmread(io.BytesIO(files[0]))
    result = answer["results"][0]
    seg = retrieve(client, result["segmentation"]["retrieve_url"])
    assert seg.SOPClassUID == SEG_CLASS and seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert (seg.Rows, seg.Columns) == (original.Rows, original.Columns)
    source = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert source.ReferencedSOPInstanceUID == original.SOPInstanceUID
    mask = seg.pixel_array.astype(bool)
    point = result["assessment"]["point"]
    assert mask[point["y"], point["x"]]  # the heatmap's maximum lies in its own region
    assert 0 < mask.mean() < 1
    assert seg.SegmentSequence[0].SegmentLabel == "saliency region"


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk not installed (.ci/run installs it)")
def test_dcmtk_parses_the_results(client, stored_pair, tmp_path):
    result = stored_pair[2]["results"][0]
    paths = {}
    for role in ("structured_report", "secondary_capture", "segmentation"):
        paths[role] = tmp_path / f"{role}.dcm"
        retrieve(client, result[role]["retrieve_url"]).save_as(paths[role], enforce_file_format=True)
    dumped = subprocess.run(
        ["dsrdump", "-Ec", str(paths["structured_report"])], capture_output=True, text=True, timeout=30
    )
    assert dumped.returncode == 0, dumped.stderr
    assert "Comprehensive SR Document" in dumped.stdout and "SCOORD" in dumped.stdout
    assert f'"Probability")="{float(result["assessment"]["probability"]):.15g}"'[:24] in dumped.stdout
    for role, name in (("secondary_capture", "SecondaryCaptureImageStorage"), ("segmentation", "SegmentationStorage")):
        listed = subprocess.run(["dcmdump", "-E", str(paths[role])], capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0 and name in listed.stdout, listed.stderr


def test_resending_an_instance_gives_the_same_result_uids(client, stored_pair):
    study, files, answer = stored_pair
    again = stow(client, files[:1], study=study).json()["results"][0]
    for role in ("secondary_capture", "segmentation", "structured_report"):
        assert again[role]["sop_instance_uid"] == answer["results"][0][role]["sop_instance_uid"]


def test_mixed_request_is_202_with_a_failure_reason_per_bad_instance(client):
    study = generate_uid()
    good = dx_instance(chest_like(64, 64, seed=1), study_uid=study)
    other_study = dx_instance(chest_like(64, 64, seed=2))
    report = pydicom.dcmread(io.BytesIO(good))
    del report.PixelData
    report.SOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    report.save_as(buffer)
    no_pixels = buffer.getvalue()
    answer = stow(client, [good, b"\x00" * 64 + b"not dicom", other_study, no_pixels], study=study)
    assert answer.status_code == 202
    body = answer.json()
    assert [uid_values(i, "00081155") for i in body["stow"][REFERENCED]["Value"]] == [
        pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID
    ]
    reasons = [i[REASON]["Value"][0] for i in body["stow"][FAILED]["Value"]]
    assert reasons == [
        FailureReason.CANNOT_UNDERSTAND,
        FailureReason.DATA_SET_MISMATCH,
        FailureReason.SOP_CLASS_NOT_SUPPORTED,
    ]
    failed = body["stow"][FAILED]["Value"]
    assert "Value" not in failed[0]["00081155"]  # unreadable bytes: no UID to echo
    assert uid_values(failed[1], "00081155") == pydicom.dcmread(io.BytesIO(other_study)).SOPInstanceUID
    assert [r["status"] for r in body["results"]] == ["assessed", "failed", "failed", "failed"]
    assert body["results"][2]["error"] == "study_mismatch" and body["results"][2]["failure_reason_hex"] == "0xA900"


def test_all_failed_is_409(client):
    answer = stow(client, [dx_instance(chest_like(64, 64))], study=generate_uid(), accept=None)
    assert answer.status_code == 409
    [failed] = answer.json()[FAILED]["Value"]
    assert failed[REASON]["Value"] == [0xA900]
    png_part = stow(client, [png_bytes(np.zeros((8, 8), np.uint8))], part_type="image/png").json()
    assert png_part["results"][0]["failure_reason"] == FailureReason.CANNOT_UNDERSTAND


def test_request_level_errors_are_json_errors(client):
    dicom = dx_instance(chest_like(32, 32))
    wrong_type = client.post("/dicomweb/studies", content=dicom, headers={"content-type": "application/dicom"})
    assert wrong_type.status_code == 415 and wrong_type.json()["error"] == "unsupported_media_type"
    too_many = stow(client, [dicom] * 7)
    assert too_many.status_code == 413 and too_many.json()["error"] == "too_large"
    truncated = client.post(
        "/dicomweb/studies",
        content=b"--x\r\nContent-Type: application/dicom\r\n\r\nDICM",
        headers={"content-type": 'multipart/related; type="application/dicom"; boundary=x'},
    )
    assert truncated.status_code == 400 and truncated.json()["error"] == "bad_image"
    assert stow(client, [dicom], model="nope").json()["error"] == "bad_parameter"
    assert client.post("/dicomweb/studies/not-a-uid", content=b"x").status_code == 422
    missing = client.get(f"/dicomweb/studies/1.2/series/1.3/instances/{generate_uid()}")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_instances_of_one_request_share_model_batches(models_dir):
    batch_sizes: list[int] = []
    app = create_app(
        settings_for(models_dir, max_batch_wait_ms=500), batch_hook=lambda name, batch: batch_sizes.append(len(batch))
    )
    with TestClient(app) as client:
        wait_ready_sync(client)
        warmup = len(batch_sizes)
        files = [dx_instance(chest_like(48, 48, seed=s)) for s in range(4)]
        assert stow(client, files).status_code == 200
    assert sum(batch_sizes[warmup:]) == 4 and max(batch_sizes[warmup:]) > 1


def test_logs_name_uids_never_patient_data(models_dir, caplog, recwarn, capfd):
    app = create_app(settings_for(models_dir))
    sop_uid = generate_uid()
    # Invalid birth date and age: pydicom's validation messages would quote them.
    malformed = pydicom.dcmread(io.BytesIO(dx_instance(chest_like(40, 40), patient_name=PHI_NAME, patient_id=PHI_ID)))
    malformed.PatientBirthDate = "03/02/1961"
    malformed.PatientAge = "61 years"
    buffer = io.BytesIO()
    malformed.save_as(buffer)
    files = [
        dx_instance(chest_like(40, 40), sop_uid=sop_uid, patient_name=PHI_NAME, patient_id=PHI_ID),
        dx_instance(chest_like(40, 40), patient_name=PHI_NAME, patient_id=PHI_ID)[:700],  # truncated
        buffer.getvalue(),
    ]
    # Only what the service logs counts (building the malformed file above made pydicom complain already).
    caplog.clear()
    recwarn.clear()
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG), TestClient(app) as client:
        wait_ready_sync(client)
        answer = stow(client, files)
        assert answer.status_code == 202
        assert [r["status"] for r in answer.json()["results"]] == ["assessed", "failed", "assessed"]
    captured = capfd.readouterr()
    text = " ".join(
        [
            caplog.text,
            *(str(r.args) for r in caplog.records),
            *(str(w.message) for w in recwarn),
            captured.out,
            captured.err,
        ]
    )
    assert sop_uid in text  # the logs do say which instance was assessed
    assert "<redacted>" in text  # pydicom did complain about the malformed values, without quoting them
    for secret in (
        PHI_NAME,
        PHI_ID,
        "Sentinel",
        "Patricia",
        "ACC-PHI-55",
        "19610203",
        "03/02/1961",
        "61 years",
        "Referrer",
    ):
        assert secret not in text, secret


# ---------------------------------------------------------------------------------------------------------
# Pushing results
# ---------------------------------------------------------------------------------------------------------


def test_stow_pushes_results_to_the_configured_server(models_dir, tmp_path):
    received: list[tuple[str, bytes, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, body, self.headers["content-type"]))
            answer = json.dumps({REFERENCED: {"vr": "SQ", "Value": []}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/dicom+json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        app = create_app(
            settings_for(
                models_dir, dicomweb_push_url=f"http://127.0.0.1:{server.server_port}/dw", state_dir=tmp_path / "state"
            )
        )
        with TestClient(app) as client:
            wait_ready_sync(client)
            answer = stow(client, [dx_instance(chest_like(40, 40, bright_object=(20, 20)))]).json()
            assert answer["results"][0]["push"] == "queued"
            pushed_line = 'normgate_dicomweb_push_total{channel="dicomweb",outcome="pushed"} 1.0'
            deadline = time.monotonic() + 30
            while pushed_line not in client.get("/metrics").text and time.monotonic() < deadline:
                time.sleep(0.05)
            metrics = client.get("/metrics").text
    finally:
        server.shutdown()
        server.server_close()
    [(path, body, content_type)] = received
    assert path == "/dw/studies"
    parts = parse_multipart_related(body, stow_boundary(content_type), max_parts=4)
    pushed = [pydicom.dcmread(io.BytesIO(p.body)) for p in parts]
    assert [d.SOPClassUID for d in pushed] == [SC_CLASS, SEG_CLASS, SR_CLASS]
    for dataset, role in zip(pushed, ("secondary_capture", "segmentation", "structured_report")):
        assert dataset.SOPInstanceUID == answer["results"][0][role]["sop_instance_uid"]
    assert pushed_line in metrics and 'normgate_dicomweb_push_queue_depth{channel="dicomweb"} 0.0' in metrics


def test_response_builder_and_status():
    from service.dicomweb.multipart import InstanceIds, StowOutcome

    ok = StowOutcome(0, InstanceIds("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3", "1.2", readable=True))
    bad = StowOutcome(1, InstanceIds(), failure_reason=0xC000)
    assert stow_status([ok]) == 200 and stow_status([ok, bad]) == 202 and stow_status([bad]) == 409
    body = store_instances_response([ok, bad], "http://x/studies/1.2")
    assert body["00081190"] == {"vr": "UR", "Value": ["http://x/studies/1.2"]}
    assert body[FAILED]["Value"][0][REASON] == {"vr": "US", "Value": [0xC000]}
    assert body[REFERENCED]["Value"][0]["00081155"] == {"vr": "UI", "Value": ["1.2.3"]}


def test_sc_of_a_large_image_is_capped_at_1024(models_dir):
    from service.dicomweb.results import SC_MAX_SIDE, heatmap_overlay

    picture = heatmap_overlay(np.zeros((3000, 2400), np.float32), np.zeros((8, 8), np.uint8), (2399, 2999))
    assert picture.shape == (SC_MAX_SIDE, round(2400 * SC_MAX_SIDE / 3000), 3)
    # The marker is centred on the scaled centre of the bottom-right pixel (818.8, 1023.8): its left arm
    # (from 2 to 0.5 radii, radius 25.6) crosses the last row, the gap around the centre stays unpainted.
    assert {tuple(p) for p in picture[1023, 775:800]} == {(0, 255, 255)}
    assert picture[1023, 812:818].max() == 0
    assert Image.fromarray(picture).mode == "RGB"
