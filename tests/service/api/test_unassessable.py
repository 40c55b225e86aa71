"""The third decision: ``unassessable`` with its reason (docs/api.md, "Unassessable"), DICOM routing by header
(docs/integration.md, "Routing"), the OOD score from the serving pass, and their metrics and decision records.

Three tiny checkpoints: ``default`` (the chest model's ``serves`` block, OOD statistics fitted here), ``mr``
(serves MR, no statistics) and ``plain`` (no ``serves``, no statistics). Expected OOD scores are computed with
models.ood directly on the decoded image, not through the service.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from models.checkpoint import load_checkpoint
from models.imaging import decode_image
from models.imaging.grid import resize_unit
from models.ood import extract_features, fit_ood, save_ood
from service.app import create_app
from service.dicomweb.multipart import build_multipart_related
from service.schemas import AssessResponse
from tests.helpers import dicom_bytes, make_checkpoint, png_bytes, radiograph, settings_for, wait_ready_sync

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PNG = {"content-type": "image/png"}
DICOM = {"content-type": "application/dicom"}
REASONS = ("blank", "too_small", "low_dynamic_range", "no_frames", "unsupported_modality", "out_of_distribution")


def in_distribution() -> np.ndarray:
    return radiograph(80, 72, seed=900)


def stripes() -> np.ndarray:
    """Sharp periodic stripes: smooth and full of grey levels (every image check passes), unlike the training set."""
    yy, xx = np.mgrid[0:80, 0:72]
    return (127 + 120 * np.sign(np.sin(xx / 2.5 + yy / 7.0)) * np.abs(np.sin(yy / 9.0))).astype(np.uint8)


def ood_score_of(checkpoint, gray: np.ndarray) -> float:
    pixels = decode_image(png_bytes(gray), "image/png").pixels
    unit = resize_unit(pixels, checkpoint.meta.input_size)[None]
    features = extract_features(checkpoint.model, unit, checkpoint.meta.mean, checkpoint.meta.std)
    return float(checkpoint.ood.score(features)[0])


class Server:
    def __init__(self, client: TestClient, root: Path, log: list[logging.LogRecord], records: list, metrics: str):
        self.client = client
        self.root = root
        self.log = log  # records of the normgate.inference logger
        self.records = records  # every DecisionRecord the assessor handed to its listeners
        self.initial_metrics = metrics  # /metrics once ready, before any request

    def assess(self, body: bytes, headers: dict, **params) -> dict:
        response = self.client.post("/assess", content=body, headers=headers, params=params)
        assert response.status_code == 200, response.text
        AssessResponse.model_validate(response.json())
        return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate-models")
    make_checkpoint(root / "default", seed=0)
    make_checkpoint(root / "mr", seed=2, serves={"modality": "MR"})
    make_checkpoint(root / "plain", seed=1, serves=None)
    # OOD statistics for "default": fitted on radiograph-like images; the threshold halfway between an image like
    # them and the stripes, so which side each falls on is known without the service.
    checkpoint = load_checkpoint(root / "default")
    train = torch.stack([resize_unit(radiograph(80, 72, seed=s).astype(np.float32) / 255, [64, 64]) for s in range(24)])
    fitted = fit_ood(checkpoint.model, checkpoint.meta, train, [0, 1] * 12, train[:12])
    save_ood(root / "default", fitted.statistics, fitted.check)
    checkpoint = load_checkpoint(root / "default")
    low, high = ood_score_of(checkpoint, in_distribution()), ood_score_of(checkpoint, stripes())
    assert high > 1.5 * low, (low, high)  # the probes are what they are meant to be
    save_ood(root / "default", checkpoint.ood, checkpoint.meta.ood.model_copy(update={"threshold": (low + high) / 2}))

    log: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = log.append  # type: ignore[method-assign]
    logger = logging.getLogger("normgate.inference")
    level = logger.level
    logger.setLevel(logging.INFO)  # python -m service logs at INFO
    logger.addHandler(handler)
    app = create_app(settings_for(root))
    try:
        with TestClient(app) as client:
            wait_ready_sync(client)
            records: list = []
            client.app.state.assessor.decision_listeners.append(records.append)
            yield Server(client, root, log, records, client.get("/metrics").text)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _frameless_dicom() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(radiograph(90, 70))))
    ds.NumberOfFrames = 0
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _four_grey_levels() -> np.ndarray:
    _, xx = np.mgrid[0:64, 0:64]
    return ((xx * 4 // 64) * 85).astype(np.uint8)


IMAGE_CASES = {
    "blank": (lambda: png_bytes(np.full((64, 80), 117, np.uint8)), PNG, (80, 64)),
    "noise": (lambda: png_bytes(np.random.default_rng(5).integers(0, 256, (64, 80)).astype(np.uint8)), PNG, (80, 64)),
    "one-pixel": (lambda: png_bytes(np.full((1, 1), 200, np.uint8)), PNG, (1, 1)),
    "tiny": (lambda: png_bytes(radiograph(12, 40)), PNG, (40, 12)),
    "four-levels": (lambda: png_bytes(_four_grey_levels()), PNG, (64, 64)),
    "no-frames": (_frameless_dicom, DICOM, (70, 90)),
    "ct": (lambda: Path(get_testdata_file("CT_small.dcm")).read_bytes(), DICOM, (128, 128)),
}
EXPECTED_REASON = {
    "blank": "blank",
    "noise": "blank",
    "one-pixel": "too_small",
    "tiny": "too_small",
    "four-levels": "low_dynamic_range",
    "no-frames": "no_frames",
    "ct": "unsupported_modality",
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_images_the_gate_cannot_judge_never_reach_a_model(server, case):
    body, headers, (width, height) = IMAGE_CASES[case]
    answer = server.assess(body(), headers)
    assert answer["decision"] == "unassessable" and answer["reason"] == EXPECTED_REASON[case]
    assert answer["label"] is None and answer["probability"] is None and answer["ood_score"] is None
    assert answer["heatmap"] is None and answer["point"] is None and answer["calibration"] is None
    assert answer["timings_ms"]["queue"] == 0 and answer["timings_ms"]["compute"] == 0
    assert answer["image"] == {"width": width, "height": height}
    assert answer["model"]["name"] == "default" and answer["threshold"] == 0.5
    record = next(r for r in server.records if r.request_id == answer["request_id"])
    assert (record.decision, record.reason, record.probability) == ("unassessable", EXPECTED_REASON[case], None)


def test_a_named_model_takes_any_modality_and_the_image_checks_still_apply(server):
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    answer = server.assess(ct, DICOM, model="plain")
    assert answer["model"]["name"] == "plain" and answer["decision"] in ("accept", "reacquire")
    assert answer["probability"] is not None and answer["heatmap"] is not None and answer["ood_score"] is None
    blank = server.assess(png_bytes(np.zeros((64, 64), np.uint8)), PNG, model="plain")
    assert (blank["model"]["name"], blank["reason"]) == ("plain", "blank")
    unknown = server.client.post("/assess", content=ct, headers=DICOM, params={"model": "nope"})
    assert unknown.status_code == 422 and unknown.json()["error"] == "bad_parameter"


def test_dicom_is_routed_by_its_header_and_png_goes_to_the_default_model(server):
    mr = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    assert server.assess(mr, DICOM)["model"]["name"] == "mr"
    chest = dicom_bytes(radiograph(80, 72))  # CR without Body Part Examined: the chest block still takes it
    answer = server.assess(chest, DICOM)
    assert answer["model"]["name"] == "default" and answer["probability"] is not None
    assert server.assess(png_bytes(in_distribution()), PNG)["model"]["name"] == "default"
    ds = pydicom.dcmread(io.BytesIO(chest))
    ds.BodyPartExamined = "KNEE"
    knee = io.BytesIO()
    ds.save_as(knee)
    assert server.assess(knee.getvalue(), DICOM)["reason"] == "unsupported_modality"


def test_stow_routes_each_instance_by_its_header(server):
    mr = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    body, content_type = build_multipart_related([mr], "gateboundary")
    stored = server.client.post(
        "/dicomweb/studies", content=body, headers={"content-type": content_type, "accept": "application/json"}
    )
    assert stored.status_code == 200, stored.text
    [result] = stored.json()["results"]
    assert result["assessment"]["model"]["name"] == "mr"


@pytest.mark.parametrize(
    ("method", "heatmap"), [("normgrad-conv1x1-combined", "png"), ("gradcam", "png"), (None, "none")]
)
def test_the_ood_score_comes_from_the_serving_pass_and_decides_out_of_distribution(server, method, heatmap):
    checkpoint = load_checkpoint(server.root / "default")
    params = {"heatmap": heatmap, **({"method": method} if method else {})}
    usual = server.assess(png_bytes(in_distribution()), PNG, **params)
    assert usual["decision"] in ("accept", "reacquire") and usual["reason"] is None
    assert usual["ood_score"] == pytest.approx(ood_score_of(checkpoint, in_distribution()), rel=1e-4)
    assert usual["ood_score"] <= checkpoint.meta.ood.threshold

    strange = server.assess(png_bytes(stripes()), PNG, **params)
    assert strange["decision"] == "unassessable" and strange["reason"] == "out_of_distribution"
    assert strange["label"] is None and strange["ood_score"] > checkpoint.meta.ood.threshold
    assert strange["ood_score"] == pytest.approx(ood_score_of(checkpoint, stripes()), rel=1e-4)
    with torch.no_grad():  # the probability is still the model's
        x = (resize_unit(decode_image(png_bytes(stripes()), "image/png").pixels, [64, 64]) - 0.5) / 0.25
        expected = torch.softmax(checkpoint.model(x[None, None].expand(1, 3, -1, -1)), 1)[0, 1].item()
    assert strange["probability"] == pytest.approx(expected, abs=1e-5)
    assert (strange["heatmap"] is not None) == (heatmap == "png") and (strange["point"] is not None) == (
        heatmap == "png"
    )
    assert server.assess(png_bytes(stripes()), PNG, model="plain")["ood_score"] is None  # no statistics: no check


def test_every_decision_and_reason_is_counted_from_zero(server):
    for model in ("default", "mr", "plain"):
        for decision, reason in [("reacquire", "none"), ("accept", "none")] + [("unassessable", r) for r in REASONS]:
            line = f'normgate_decisions_total{{decision="{decision}",model="{model}",reason="{reason}"}} 0.0'
            assert line in server.initial_metrics, line

    def blank_count() -> float:
        for line in server.client.get("/metrics").text.splitlines():
            if line.startswith('normgate_decisions_total{decision="unassessable",model="default",reason="blank"}'):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no blank counter")

    before = blank_count()
    server.assess(png_bytes(np.full((64, 64), 3, np.uint8)), PNG)
    assert blank_count() == before + 1


def test_a_model_without_statistics_says_once_that_the_check_is_off(server):
    messages = [r.getMessage() for r in server.log if "out-of-distribution check is off" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in messages) == ["model mr", "model plain"]


def test_render_refuses_a_dicom_without_frames(server):
    response = server.client.post("/render", content=_frameless_dicom(), headers=DICOM)
    assert response.status_code == 400 and "Number of Frames 0" in response.json()["detail"]
