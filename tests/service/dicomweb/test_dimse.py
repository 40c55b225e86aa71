"""The DICOM (DIMSE) listener with dcmtk on both sides: ``storescu`` as the modality, ``storescp`` as the AE that
receives the results by C-STORE.

NormGate runs as ``python -m service`` with NORMGATE_DIMSE_PORT, an allowed calling AE and
NORMGATE_DIMSE_RESULT_DESTINATION = storescp's AE@host:port. A chest DX sent with ``storescu`` is assessed like a
STOW-RS instance (its SR says what ``POST /assess`` says about the same file) and its SC, SEG and SR arrive at
storescp. A calling AE that is not allowed is rejected at association; an instance without pixels gets the
C-STORE failure status 0x0122.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from service.dicomweb.dimse import parse_destination
from tests.helpers import make_checkpoint
from tests.service.dicom_factory import chest_like, dx_instance
from tests.service.dicomweb.orthanc import NormGate, free_port, stop, wait_until
from tests.service.dicomweb.sr_reading import read_sr

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

pytestmark = pytest.mark.skipif(
    not (shutil.which("storescu") and shutil.which("storescp")), reason="needs dcmtk (.ci/run installs it)"
)


def storescu(port: int, path, calling: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", "-v", "-aet", calling, "-aec", "NORMGATE", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_destination_parsing():
    assert str(parse_destination("PACS_AE@pacs.example:104")) == "PACS_AE@pacs.example:104"
    assert parse_destination("A@[::1]:11112").host == "::1"
    for bad in ("PACS", "PACS@host", "WAY_TOO_LONG_AE_TITLE@h:104", "A@h:0", "A@h:70000"):
        with pytest.raises(ValueError):
            parse_destination(bad)


@pytest.mark.timeout(300)
def test_c_store_in_results_c_stored_out(tmp_path):
    models = tmp_path / "models"
    make_checkpoint(models / "default", seed=0)
    received = tmp_path / "received"
    received.mkdir()
    scp_port, dimse_port = free_port(), free_port()
    scp_log = tmp_path / "storescp.log"
    normgate = NormGate(
        tmp_path,
        {
            "NORMGATE_MODELS_DIR": str(models),
            "NORMGATE_STATE_DIR": str(tmp_path / "state"),
            "NORMGATE_DIMSE_PORT": str(dimse_port),
            "NORMGATE_MIN_IMAGE_SIDE": "16",  # the test radiographs are small; too_small would skip the SEG
            "NORMGATE_DIMSE_AE_TITLE": "NORMGATE",
            "NORMGATE_DIMSE_ALLOWED_AES": "MODALITY,OTHER_OK",
            "NORMGATE_DIMSE_RESULT_DESTINATION": f"RESULTS@127.0.0.1:{scp_port}",
            "NORMGATE_DICOMWEB_PUSH_BACKOFF_S": "0.2",
            "NORMGATE_DICOMWEB_PUSH_BACKOFF_MAX_S": "1",
        },
    )
    logs = [normgate.log, scp_log]
    radiograph = tmp_path / "chest.dcm"
    radiograph.write_bytes(
        dx_instance(chest_like(128, 112, seed=5, bright_object=(40, 70)), study_uid=generate_uid(), body_part="CHEST")
    )
    original = pydicom.dcmread(radiograph)
    report = pydicom.dcmread(io.BytesIO(dx_instance(chest_like(32, 32))))
    del report.PixelData
    no_pixels = tmp_path / "no-pixels.dcm"
    report.save_as(no_pixels)

    scp = None
    with httpx.Client(timeout=60) as http, scp_log.open("wb") as scp_out:
        try:
            scp = subprocess.Popen(
                ["storescp", "-aet", "RESULTS", "-od", str(received), "+uf", str(scp_port)],
                stdout=scp_out,
                stderr=subprocess.STDOUT,
            )
            normgate.start(http)

            sent = storescu(dimse_port, radiograph, "MODALITY")
            assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stderr, sent.stderr

            files = wait_until(
                lambda: sorted(received.glob("*")) if len(list(received.glob("*"))) >= 3 else None,
                60,
                "three results at storescp",
                logs,
            )
            results = {ds.SOPClassUID: ds for ds in (pydicom.dcmread(f) for f in files)}
            assert set(results) == {SC_CLASS, SEG_CLASS, SR_CLASS}
            for ds in results.values():
                assert ds.StudyInstanceUID == original.StudyInstanceUID and ds.PatientID == original.PatientID

            direct = http.post(
                f"{normgate.url}/assess", content=radiograph.read_bytes(), headers={"content-type": "application/dicom"}
            ).json()
            summary = read_sr(results[SR_CLASS])
            assert summary.probability == direct["probability"] and summary.recommendation == direct["decision"].upper()
            assert summary.peak_image == original.SOPInstanceUID
            assert summary.segment_reference == (results[SEG_CLASS].SOPInstanceUID, 1)
            pushed = 'normgate_dicomweb_push_total{channel="dimse",outcome="pushed"}'
            # storescp has the files before NormGate has the C-STORE responses and counts the set
            wait_until(lambda: normgate.metric(http, pushed) == 1, 30, "the set counted as pushed", logs)
            decisions = f'normgate_decisions_total{{decision="{direct["decision"]}",model="default",reason="none"}}'
            assert normgate.metric(http, decisions) == 2  # the C-STORE and the /assess of the same file

            # A calling AE title that is not allowed: association rejected, nothing assessed.
            refused = storescu(dimse_port, radiograph, "INTRUDER")
            assert refused.returncode != 0 and "Rejected" in refused.stderr + refused.stdout
            # No pixels: the instance's status is 0x0122 (SOP Class not supported), counted as a rejection.
            not_image = storescu(dimse_port, no_pixels, "MODALITY")
            assert "Received Store Response (Refused: SOPClassNotSupported)" in not_image.stderr, not_image.stderr
            assert normgate.metric(http, 'normgate_rejected_total{reason="bad_image"}') == 1
        finally:
            normgate.stop()
            stop(scp)
