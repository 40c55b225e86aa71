"""STOW-RS of a classic single-frame series (a cine stored frame by frame): every instance assessed on arrival,
and one series result (decision + SR referencing every frame) when the series is complete: at once when it came
in one request, NORMGATE_SERIES_SETTLE_S after its last instance otherwise (service/dicomweb/series.py)."""

from __future__ import annotations

import io
import random
import time

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.dicomweb.multipart import build_multipart_related, parse_multipart_related, stow_boundary
from service.dicomweb.results import series_report_uids
from tests.helpers import LVOT_SERVES, make_checkpoint, settings_for, wait_ready_sync
from tests.service.dicom_factory import cine_frames, mr_series
from tests.service.dicomweb.test_results import _groups

pytestmark = pytest.mark.timeout(180)
SETTLE_S = 0.4
FRAMES = cine_frames(5, 40, 48, seed=21)


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("series-models")
    make_checkpoint(root / "default", seed=0)
    make_checkpoint(root / "lvot", seed=3, input_size=[48, 48], serves=LVOT_SERVES)
    app = create_app(settings_for(root, series_settle_s=SETTLE_S, dicomweb_max_instances=8))
    records: list = []
    with TestClient(app) as client:
        wait_ready_sync(client)
        app.state.assessor.decision_listeners.append(records.append)
        yield client, records


def stow(client, instances):
    body, content_type = build_multipart_related(instances, "bndseries")
    headers = {"content-type": content_type, "accept": "application/json"}
    answer = client.post("/dicomweb/studies", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def retrieve(client, url: str) -> pydicom.Dataset:
    answer = client.get(url)
    assert answer.status_code == 200
    [part] = parse_multipart_related(answer.content, stow_boundary(answer.headers["content-type"]), max_parts=1)
    return pydicom.dcmread(io.BytesIO(part.body))


def test_a_series_sent_in_one_request_gets_its_result_in_the_answer(app_client):
    client, records = app_client
    instances = mr_series(FRAMES)
    shuffled = instances[:]
    random.Random(3).shuffle(shuffled)  # the series order comes from Instance Number, not arrival
    answer = stow(client, shuffled)
    by_uid = {r["sop_instance_uid"]: r["assessment"] for r in answer["results"]}
    uids = [str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for b in instances]
    assert len(by_uid) == 5 and all(a["model"]["name"] == "lvot" and a["frames"] is None for a in by_uid.values())
    [series] = answer["series"]
    assert series["sop_instance_uids"] == uids
    assessed = series["assessment"]
    probabilities = [by_uid[u]["probability"] for u in uids]
    assert [f["probability"] for f in assessed["frames"]] == probabilities
    assert [f["decision"] for f in assessed["frames"]] == [by_uid[u]["decision"] for u in uids]
    worst = int(np.argmax(probabilities))
    assert assessed["worst_frame"] == worst and assessed["probability"] == probabilities[worst]
    expected = "reacquire" if any(by_uid[u]["decision"] == "reacquire" for u in uids) else "accept"
    assert assessed["decision"] == expected and assessed["point"] == by_uid[uids[worst]]["point"]
    # Its SR: retrievable, one group per frame in series order, the deciding frame's peak.
    report = retrieve(client, series["structured_report"]["retrieve_url"])
    groups = _groups(report)
    assert groups["NormGate series assessment"]["sources"] == uids
    assert [groups[f"frame {n + 1}"]["probability"] for n in range(5)] == pytest.approx(probabilities)
    assert groups[f"saliency peak of frame {worst + 1}"]["sources"] == [uids[worst]]
    series_uid = str(pydicom.dcmread(io.BytesIO(instances[0])).SeriesInstanceUID)
    method = by_uid[uids[0]]["heatmap"]["method"]
    assert series_report_uids(series_uid, uids, "lvot", "test-1", method)[1] == str(report.SOPInstanceUID)
    # Audited with its own assessment id (not counted again: its frames were).
    [record] = [r for r in records if r.assessment_id == assessed["assessment_id"]]
    assert (record.series_instance_uid, record.sop_instance_uid, record.decision) == (series_uid, None, expected)


def test_a_series_declaring_its_phases_is_complete_when_they_have_all_arrived(app_client):
    client, _ = app_client
    instances = mr_series(FRAMES)  # Cardiac Number of Images 5
    assert stow(client, instances[:2])["series"] == []  # 2 of 5: not complete, though it came in one request
    [series] = stow(client, instances[2:])["series"]
    assert series["sop_instance_uids"] == [str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for b in instances]


def test_a_series_sent_in_pieces_gets_its_result_once_it_settles(app_client):
    client, records = app_client
    instances = mr_series(FRAMES, cardiac_number_of_images=None)
    uids = [str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for b in instances]
    # No count declared: what came whole in one request is the series (as Orthanc's stable-series forward is) …
    [first] = stow(client, instances[:2])["series"]
    assert first["sop_instance_uids"] == uids[:2]
    # … until more of it arrives: then it waits to settle, and a new result covers every frame.
    assert stow(client, instances[2:])["series"] == []
    header = pydicom.dcmread(io.BytesIO(instances[0]))
    study, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
    stow_service = client.app.state.stow

    def settled(frame_uids: list[str], timeout_s: float = 30.0):
        sr_series, sr_uid = series_report_uids(series_uid, frame_uids, "lvot", "test-1", "normgrad-conv1x1-combined")
        deadline = time.monotonic() + timeout_s
        while (stored := stow_service.results.get(study, sr_series, sr_uid)) is None:
            assert time.monotonic() < deadline, "the series never settled"
            time.sleep(0.05)
        return pydicom.dcmread(io.BytesIO(stored.part10))

    started = time.monotonic()
    report = settled(uids)
    assert time.monotonic() - started >= SETTLE_S * 0.5  # made by the settle timer, not by the request
    assert _groups(report)["NormGate series assessment"]["sources"] == uids
    assert [r.series_instance_uid for r in records].count(series_uid) == 7  # 5 frames + 2 series results
    # A late instance reopens the series: after settling again a new SR covers all six frames.
    more = mr_series(
        cine_frames(6, 40, 48, seed=21), study_uid=study, series_uid=series_uid, cardiac_number_of_images=None
    )
    stow(client, [more[5]])
    report = settled([*uids, str(pydicom.dcmread(io.BytesIO(more[5])).SOPInstanceUID)])
    assert len(_groups(report)["NormGate series assessment"]["sources"]) == 6


def test_a_single_instance_series_gets_no_series_result(app_client):
    client, _ = app_client
    answer = stow(client, mr_series(FRAMES[:1]))
    assert answer["series"] == [] and answer["results"][0]["status"] == "assessed"
