"""Every decision reaches the decision listeners once, with the calibration the model carries applied."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.datasets import load_gray
from models.imaging import preprocess_batch
from service.app import create_app
from service.serving.decisions import DecisionRecord
from tests.helpers import make_checkpoint, png_bytes, radiograph, running_app, settings_for


@pytest.fixture(scope="module")
def calibrated_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrated")
    folder = make_checkpoint(root / "default", seed=5)
    meta = json.loads((folder / "model.json").read_text())
    meta["calibration"] = {
        "version": "site-2026-12",
        "temperature": 2.5,
        "threshold": 0.61,
        "target": "sensitivity 0.95",
        "fitted_on": "a test set of 0 cases",
    }
    (folder / "model.json").write_text(json.dumps(meta))
    return root


def test_calibrated_probability_threshold_and_one_record_per_decision(calibrated_models, tmp_path):
    records: list[DecisionRecord] = []
    app = create_app(settings_for(calibrated_models))
    app.state.assessor.decision_listeners.append(records.append)
    app.state.assessor.decision_listeners.insert(0, lambda record: 1 / 0)  # a failing listener changes nothing
    body = png_bytes(radiograph(90, 80, seed=2, spot=(40, 30)))

    async def scenario() -> list[dict]:
        async with running_app(app) as client:
            return [
                (await client.post("/assess", content=body, headers={"content-type": "image/png"})).json()
                for _ in range(2)
            ]

    answers = asyncio.run(scenario())

    # Independent computation: softmax of the logits divided by the temperature.
    checkpoint = load_checkpoint(calibrated_models / "default")
    (tmp_path / "x.png").write_bytes(body)
    x = preprocess_batch([load_gray(tmp_path / "x.png")], [64, 64], checkpoint.meta.mean, checkpoint.meta.std)
    with torch.no_grad():
        expected = torch.softmax(checkpoint.model(x) / 2.5, dim=1)[0, 1].item()
    for answer in answers:
        assert answer["probability"] == pytest.approx(expected, abs=1e-5)
        assert answer["threshold"] == 0.61 and answer["calibration"] == "site-2026-12"
        assert answer["decision"] == ("reacquire" if expected >= 0.61 else "accept")

    assert [r.assessment_id for r in records] == [a["assessment_id"] for a in answers]
    record = records[0]
    assert record.source == "assess" and record.decision == answers[0]["decision"] and record.reason is None
    assert record.probability == answers[0]["probability"] and record.calibration == "site-2026-12"
    assert record.model_name == "default" and record.method == "normgrad-conv1x1-combined"
    assert record.weights_sha256 is not None and len(record.weights_sha256) == 64
    assert (record.point_x, record.point_y) == (answers[0]["point"]["x"], answers[0]["point"]["y"])
    assert record.sop_instance_uid is None and record.time.tzinfo is not None
