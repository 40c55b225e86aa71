"""End to end with a real PACS: storescu → Orthanc → (DICOMweb STOW-RS) → NormGate → (STOW-RS push) → Orthanc.

Everything runs on loopback ports picked at test time, from Debian's packages (``orthanc``,
``orthanc-dicomweb``, ``dcmtk``; ``.ci/run`` installs them), with the committed configuration of
``deploy/orthanc/`` (tests/service/dicomweb/orthanc.py):

* NormGate: ``python -m service`` on a tiny checkpoint written by the test, with ``NORMGATE_DICOMWEB_PUSH_URL`` =
  Orthanc's DICOMweb root.
* Orthanc with the DICOMweb plugin; NormGate is a DICOMweb server of the plugin, and the Lua ``OnStoredInstance``
  callback posts to ``/dicom-web/servers/normgate/stow`` only what arrived over DICOM (C-STORE) *and* what a
  NormGate model serves (CR/DX/DR chest). NormGate's own results come back over STOW-RS and are not forwarded.
* ``storescu`` sends a synthetic DX chest radiograph (MONOCHROME1, a dense object) to Orthanc's DICOM port.

The test waits (bounded) until Orthanc's study holds the radiograph and NormGate's three results — the
Secondary Capture, the Segmentation and the SR — then checks the SR against ``POST /assess`` of the same file
and that Orthanc renders the Secondary Capture at its size. Then the routing: a CT and a DX of a hand are
stored the same way, and a second chest DX after them; once the chest DX's results are in (Orthanc runs its Lua
callbacks in order), the CT and the hand have no results and NormGate has seen exactly two STOW requests.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from tests.helpers import make_checkpoint
from tests.service.dicom_factory import CT_IMAGE, PHI_ID, PHI_NAME, chest_like, dx_instance
from tests.service.dicomweb.orthanc import NormGate, Orthanc, requires_orthanc, wait_until
from tests.service.dicomweb.sr_reading import read_sr

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
STOW_COUNT = 'normgate_request_duration_seconds_count{endpoint="/dicomweb/studies",status="200"}'

pytestmark = requires_orthanc


@pytest.mark.timeout(300)
def test_storescu_to_orthanc_to_normgate_and_results_back_in_orthanc(tmp_path):
    models = tmp_path / "models"
    make_checkpoint(models / "default", seed=0)
    normgate = NormGate(tmp_path, {})
    orthanc = Orthanc(tmp_path, f"{normgate.url}/dicomweb/")
    normgate.env.update(
        NORMGATE_MODELS_DIR=str(models),
        NORMGATE_DICOMWEB_PUSH_URL=f"{orthanc.url}/dicom-web",
        NORMGATE_DICOMWEB_PUSH_BACKOFF_S="0.5",
        NORMGATE_STATE_DIR=str(tmp_path / "state"),
    )
    logs = [normgate.log, orthanc.log]

    attenuation = chest_like(512, 416, seed=7, bright_object=(300, 120))
    study_uid = generate_uid()
    radiograph = tmp_path / "chest-dx.dcm"
    radiograph.write_bytes(dx_instance(attenuation, photometric="MONOCHROME1", study_uid=study_uid, body_part="CHEST"))
    original = pydicom.dcmread(radiograph)

    with httpx.Client(timeout=30) as http:
        try:
            orthanc.start(http)
            normgate.start(http)
            orthanc.store_scu(radiograph)

            def study_instances():
                found = orthanc.study_instances(http, study_uid)
                return found if len(found) >= 4 else None

            instances = wait_until(study_instances, 90, "four instances in Orthanc's study", logs)

            by_class = {}
            for instance in instances:
                tags = http.get(f"{orthanc.url}/instances/{instance['ID']}/simplified-tags").json()
                by_class[tags["SOPClassUID"]] = (instance["ID"], tags)
            assert set(by_class) == {original.SOPClassUID, SC_CLASS, SEG_CLASS, SR_CLASS}

            # The SR in Orthanc says what /assess says about the same file.
            direct = http.post(
                f"{normgate.url}/assess",
                content=radiograph.read_bytes(),
                headers={"content-type": "application/dicom"},
            ).json()
            sr_id, _ = by_class[SR_CLASS]
            sr = pydicom.dcmread(io.BytesIO(http.get(f"{orthanc.url}/instances/{sr_id}/file").content))
            assert sr.StudyInstanceUID == study_uid and sr.PatientID == PHI_ID
            summary = read_sr(sr)
            assert summary.probability == direct["probability"] and summary.threshold == direct["threshold"]
            assert summary.recommendation == direct["decision"].upper()
            assert summary.peak == [direct["point"]["x"] + 0.5, direct["point"]["y"] + 0.5]
            assert summary.peak_image == original.SOPInstanceUID
            seg_id, _ = by_class[SEG_CLASS]
            seg = pydicom.dcmread(io.BytesIO(http.get(f"{orthanc.url}/instances/{seg_id}/file").content))
            assert summary.segment_reference == (seg.SOPInstanceUID, 1)

            # The Secondary Capture is displayable: Orthanc renders it at its own size, in colour.
            sc_id, sc_tags = by_class[SC_CLASS]
            assert sc_tags["ImageType"] == "DERIVED\\SECONDARY" and sc_tags["StudyInstanceUID"] == study_uid
            assert sc_tags["SeriesInstanceUID"] != original.SeriesInstanceUID
            preview = http.get(f"{orthanc.url}/instances/{sc_id}/preview")
            assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
            picture = Image.open(io.BytesIO(preview.content))
            assert picture.size == (int(sc_tags["Columns"]), int(sc_tags["Rows"]))
            assert picture.size[0] == 416 and picture.size[1] > 512  # the image plus the banner above it
            colours = np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)
            assert picture.mode == "RGB" and len(colours) > 100

            # Routing: what no model serves stays in Orthanc and never reaches NormGate.
            stows_before = normgate.metric(http, STOW_COUNT)
            small = chest_like(64, 64, seed=3)
            not_served = {
                "ct": dx_instance(small, modality="CT", sop_class_uid=CT_IMAGE, body_part="CHEST"),
                "hand": dx_instance(small, body_part="HAND"),
            }
            later_study = generate_uid()
            not_served["later chest"] = dx_instance(small, study_uid=later_study, body_part="CHEST")
            for name, body in not_served.items():
                path = tmp_path / f"{name}.dcm"
                path.write_bytes(body)
                orthanc.store_scu(path)
            wait_until(lambda: len(orthanc.study_instances(http, later_study)) >= 3, 60, "later chest results", logs)
            for name in ("ct", "hand"):
                study = pydicom.dcmread(io.BytesIO(not_served[name])).StudyInstanceUID
                assert len(orthanc.study_instances(http, study)) == 1, f"{name}: results appeared"
            assert normgate.metric(http, STOW_COUNT) == stows_before + 1
        finally:
            orthanc.stop()
            normgate.stop()
    # NormGate's whole log (uvicorn access lines included) names no patient.
    text = normgate.log.read_text(errors="replace")
    assert original.SOPInstanceUID in text
    assert PHI_NAME not in text and PHI_ID not in text and "Sentinel" not in text


@pytest.mark.timeout(300)
def test_a_stable_mr_four_chamber_series_is_forwarded_whole_and_gets_one_series_report(tmp_path):
    """The cardiac rule of the Lua script: an MR 4-chamber cine series is forwarded in one STOW-RS request when
    Orthanc finds it stable, and NormGate's series SR (referencing every frame) lands in Orthanc; a short-axis
    MR series stays in Orthanc."""
    from tests.helpers import LVOT_SERVES
    from tests.service.dicom_factory import cine_frames, mr_series
    from tests.service.dicomweb.test_results import _groups

    models = tmp_path / "models"
    make_checkpoint(models / "default", seed=0)
    make_checkpoint(models / "lvot", seed=3, input_size=[48, 48], serves=LVOT_SERVES)
    normgate = NormGate(tmp_path, {})
    orthanc = Orthanc(tmp_path, f"{normgate.url}/dicomweb/", StableAge=2)
    normgate.env.update(
        NORMGATE_MODELS_DIR=str(models),
        NORMGATE_DICOMWEB_PUSH_URL=f"{orthanc.url}/dicom-web",
        NORMGATE_DICOMWEB_PUSH_BACKOFF_S="0.5",
        NORMGATE_STATE_DIR=str(tmp_path / "state"),
        NORMGATE_MIN_IMAGE_SIDE="16",
    )
    logs = [normgate.log, orthanc.log]
    study_uid = generate_uid()
    cine = mr_series(cine_frames(4, 40, 48, seed=5), study_uid=study_uid, series_description="CINE_4CH")
    short_axis = mr_series(cine_frames(2, 40, 48, seed=6), study_uid=study_uid, series_description="SAX cine")
    uids = [str(pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID) for body in cine]
    with httpx.Client(timeout=30) as http:
        try:
            orthanc.start(http)
            normgate.start(http)
            for index, body in enumerate(cine + short_axis):
                path = tmp_path / f"mr-{index}.dcm"
                path.write_bytes(body)
                orthanc.store_scu(path)

            def series_report():
                for instance in orthanc.study_instances(http, study_uid):
                    tags = http.get(f"{orthanc.url}/instances/{instance['ID']}/simplified-tags").json()
                    if tags["SOPClassUID"] == SR_CLASS and tags.get("SeriesDescription", "").endswith("series report"):
                        return instance["ID"]
                return None

            sr_id = wait_until(series_report, 90, "the series SR in Orthanc", logs)
            report = pydicom.dcmread(io.BytesIO(http.get(f"{orthanc.url}/instances/{sr_id}/file").content))
            assert _groups(report)["NormGate series assessment"]["sources"] == uids
            # One STOW request for the whole cine; every frame also has its own three results; the short-axis
            # series was never forwarded (its instances have no results).
            assert normgate.metric(http, STOW_COUNT) == 1
            assert len(orthanc.study_instances(http, study_uid)) == 4 + 2 + 4 * 3 + 1
        finally:
            orthanc.stop()
            normgate.stop()
