"""An archive outage across a crash: every result set still reaches the real Orthanc, each instance once.

With short backoff settings (0.2 s doubling to at most 1 s) so that it stays quick:

1. Orthanc and NormGate start (NormGate pushes to Orthanc, its outbox under a test state folder); Orthanc is
   stopped again — the archive is down.
2. 20 studies (one chest DX each) are stored to NormGate with STOW-RS while Orthanc is down. After the 10th,
   NormGate is killed with SIGKILL (no shutdown, no drain) and started again on the same state folder; the
   other 10 go to the new process. Both processes keep retrying against the dead archive meanwhile.
3. Orthanc starts again on its old storage. Within a bounded wait every study holds exactly the result
   instances NormGate announced for it (SC, SEG when there is one, SR) — no more, no fewer: the retries of
   the first process and the re-delivery by the second do not duplicate anything, because the results' UIDs
   are the same and Orthanc stores a SOP Instance once.
4. One image is sent again: its results are delivered a second time (as after a crash between the archive's
   answer and the outbox update) and Orthanc still holds each instance once.
"""

from __future__ import annotations

import time

import httpx
import pytest
from pydicom.uid import generate_uid

from service.dicomweb.multipart import build_multipart_related
from tests.helpers import make_checkpoint
from tests.service.dicom_factory import chest_like, dx_instance
from tests.service.dicomweb.orthanc import NormGate, Orthanc, requires_orthanc, wait_until

pytestmark = requires_orthanc

STUDIES = 20
KILL_AFTER = 10
ROLES = ("secondary_capture", "segmentation", "structured_report")


def _chest(study_uid: str, seed: int) -> bytes:
    return dx_instance(chest_like(64, 64, seed=seed, bright_object=(20, 40)), study_uid=study_uid, body_part="CHEST")


def _stow_one(http: httpx.Client, normgate: NormGate, study_uid: str, instance: bytes, seed: int) -> set[str]:
    """Store one chest DX; the SOP Instance UIDs of the results NormGate made for it."""
    body, content_type = build_multipart_related([instance], f"outage{seed}")
    answer = http.post(
        f"{normgate.url}/dicomweb/studies/{study_uid}",
        content=body,
        headers={"content-type": content_type, "accept": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert result["push"] == "queued", result
    return {result[role]["sop_instance_uid"] for role in ROLES if result[role] is not None}


@pytest.mark.timeout(400)
def test_results_reach_the_archive_after_an_outage_and_a_kill_9(tmp_path):
    started = time.monotonic()
    models = tmp_path / "models"
    make_checkpoint(models / "default", seed=0)
    settings = {
        "NORMGATE_MODELS_DIR": str(models),
        "NORMGATE_STATE_DIR": str(tmp_path / "state"),
        "NORMGATE_DICOMWEB_PUSH_BACKOFF_S": "0.2",
        "NORMGATE_DICOMWEB_PUSH_BACKOFF_MAX_S": "1",
        "NORMGATE_DICOMWEB_PUSH_TIMEOUT_S": "5",
    }
    first = NormGate(tmp_path, settings, name="normgate-1")
    orthanc = Orthanc(tmp_path, f"{first.url}/dicomweb/")
    first.env["NORMGATE_DICOMWEB_PUSH_URL"] = f"{orthanc.url}/dicom-web"
    second = NormGate(tmp_path, {**settings, "NORMGATE_DICOMWEB_PUSH_URL": f"{orthanc.url}/dicom-web"}, "normgate-2")
    logs = [first.log, second.log, orthanc.log]
    expected: dict[str, set[str]] = {}
    originals: dict[str, bytes] = {}

    with httpx.Client(timeout=60) as http:
        try:
            orthanc.start(http)
            first.start(http)
            orthanc.stop()  # the archive goes down

            for n in range(STUDIES):
                if n == KILL_AFTER:
                    assert first.metric(http, 'normgate_dicomweb_push_queue_depth{channel="dicomweb"}') == KILL_AFTER
                    assert first.metric(http, 'normgate_dicomweb_push_retries_total{channel="dicomweb"}') >= 1
                    first.kill()
                    second.start(http)
                    # The sets of the killed process are back, from the outbox file.
                    assert second.metric(http, 'normgate_dicomweb_push_queue_depth{channel="dicomweb"}') == KILL_AFTER
                study_uid = generate_uid()
                originals[study_uid] = _chest(study_uid, seed=n)
                target = first if n < KILL_AFTER else second
                expected[study_uid] = _stow_one(http, target, study_uid, originals[study_uid], seed=n)
            time.sleep(1.5)  # a few failing rounds of the second process's sender
            assert second.metric(http, 'normgate_dicomweb_push_queue_depth{channel="dicomweb"}') == STUDIES
            assert second.metric(http, 'normgate_dicomweb_push_oldest_age_seconds{channel="dicomweb"}') > 1

            orthanc.start(http)  # the archive is back, with its old storage

            def every_study_complete():
                return all(len(orthanc.study_instances(http, uid)) >= len(sops) for uid, sops in expected.items())

            wait_until(every_study_complete, 120, "every study's results in Orthanc", logs)
            wait_until(
                lambda: second.metric(http, 'normgate_dicomweb_push_queue_depth{channel="dicomweb"}') == 0,
                30,
                "an empty outbox",
                logs,
            )
            for uid, sops in expected.items():
                stored = [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.study_instances(http, uid)]
                assert sorted(stored) == sorted(sops), f"study {uid}: {stored} != {sops}"
            assert len(http.get(f"{orthanc.url}/studies").json()) == STUDIES
            assert second.metric(http, 'normgate_dicomweb_push_total{channel="dicomweb",outcome="pushed"}') == STUDIES
            assert second.metric(http, 'normgate_dicomweb_push_total{channel="dicomweb",outcome="expired"}') == 0

            # A re-delivery (what a crash between "stored" and "removed from the outbox" causes): the first study's
            # image sent again gives the same result UIDs, delivered again, and Orthanc still holds each once.
            again_uid = next(iter(expected))
            assert _stow_one(http, second, again_uid, originals[again_uid], seed=0) == expected[again_uid]
            pushed = 'normgate_dicomweb_push_total{channel="dicomweb",outcome="pushed"}'
            wait_until(lambda: second.metric(http, pushed) == STUDIES + 1, 30, "the repeat delivered", logs)
            stored = [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.study_instances(http, again_uid)]
            assert sorted(stored) == sorted(expected[again_uid])
        finally:
            orthanc.stop()
            second.stop()
            if first.process is not None:
                first.stop()
    print(f"outage test: {time.monotonic() - started:.1f} s")
