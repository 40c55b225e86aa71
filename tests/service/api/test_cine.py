"""Multi-frame DICOM (a cine) through POST /assess: routed by header to the cardiac stand-in, decoded once, every
frame queued at once and computed, the series decided from its frames (docs/api.md, "Multi-frame images and
series"), and the limits: NORMGATE_MAX_FRAMES, the queue bound counted in frames, Number of Frames vs the data.

Two tiny checkpoints: ``default`` (chest routing, 64 × 64) and ``lvot`` (the shipped cardiac model's routing,
48 × 48, another grid so routing before decoding matters). Expected per-frame probabilities come from running
the checkpoint directly on the frames (load_checkpoint → preprocess_batch → softmax), not from the service.
"""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.imaging.grid import grid_point_to_original, preprocess_batch
from service.app import create_app
from service.schemas import AssessResponse
from tests.helpers import LVOT_SERVES, heatmap_array, make_checkpoint, running_app, settings_for
from tests.service.dicom_factory import cine_frames, enhanced_mr, mr_series
from tests.service.serving.test_queueing import metric_value

pytestmark = pytest.mark.timeout(240)

DICOM = {"content-type": "application/dicom"}
FRAMES = cine_frames(6, 40, 56, seed=11)


def expected_probabilities(folder, frames: np.ndarray) -> np.ndarray:
    checkpoint = load_checkpoint(folder)
    meta = checkpoint.meta
    batch = preprocess_batch(list(frames.astype(np.float32) / 4095.0), meta.input_size, meta.mean, meta.std)
    with torch.no_grad():
        return torch.softmax(checkpoint.model(batch), dim=1)[:, meta.positive_index].numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cine-models")
    make_checkpoint(root / "default", seed=0)
    make_checkpoint(root / "lvot", seed=3, input_size=[48, 48], serves=LVOT_SERVES)
    # A threshold between the frames' probabilities: some frames reacquire, some accept.
    probabilities = expected_probabilities(root / "lvot", FRAMES)
    meta = json.loads((root / "lvot" / "model.json").read_text())
    meta["threshold"] = float(np.sort(probabilities)[3] - 1e-6)
    (root / "lvot" / "model.json").write_text(json.dumps(meta))
    return root, probabilities


class Gate:
    """The batch hook: open for the warm-up; ``close()`` holds the worker thread at its next batch."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()

    def close(self) -> None:
        self.opened.clear()
        self.entered.clear()

    def __call__(self, model_name, batch) -> None:
        self.entered.set()
        assert self.opened.wait(60), "test gate never opened"


def test_a_cine_is_routed_to_the_cardiac_model_decoded_once_and_answered_per_frame(models):
    root, probabilities = models

    async def scenario():
        app = create_app(settings_for(root, max_batch_size=4))
        async with running_app(app) as client:
            before = (await client.get("/metrics")).text
            cine = await client.post("/assess", content=enhanced_mr(FRAMES), headers=DICOM)
            after = (await client.get("/metrics")).text
            singles = [(await client.post("/assess", content=body, headers=DICOM)).json() for body in mr_series(FRAMES)]
            quiet = await client.post("/assess", content=enhanced_mr(FRAMES), headers=DICOM, params={"heatmap": "none"})
            chest = await client.post(
                "/assess", content=enhanced_mr(FRAMES), headers=DICOM, params={"model": "default"}
            )
        return cine, before, after, singles, quiet, chest

    cine, before, after, singles, quiet, chest = asyncio.run(scenario())
    assert cine.status_code == 200, cine.text
    answer = cine.json()
    AssessResponse.model_validate(answer)
    assert answer["model"]["name"] == "lvot" and answer["image"] == {"width": 56, "height": 40}
    frames = answer["frames"]
    assert [f["index"] for f in frames] == list(range(6))
    got = np.array([f["probability"] for f in frames])
    np.testing.assert_allclose(got, probabilities, atol=1e-5)
    threshold = answer["threshold"]
    assert [f["decision"] for f in frames] == ["reacquire" if p >= threshold else "accept" for p in got]
    # The series: reacquire (some frames reach the threshold), decided by the highest-probability frame.
    worst = int(np.argmax(got))
    assert answer["decision"] == "reacquire" and answer["label"] == "foreign_object" and answer["reason"] is None
    assert answer["worst_frame"] == worst and answer["probability"] == frames[worst]["probability"]
    assert answer["point"] == frames[worst]["point"] and answer["heatmap"] == frames[worst]["heatmap"]
    for frame in frames:
        heat = heatmap_array({"heatmap": frame["heatmap"]})
        assert heat.shape == (48, 48)
        # The point is the map's peak mapped to original pixels (the 8-bit PNG may tie a few cells at 255).
        peaks = {grid_point_to_original(x, y, (48, 48), (40, 56)) for y, x in zip(*np.nonzero(heat == heat.max()))}
        assert (frame["point"]["x"], frame["point"]["y"]) in peaks
    # Each frame as a single-frame instance of a classic series gets the same answer.
    for frame, single in zip(frames, singles):
        assert single["model"]["name"] == "lvot" and single["frames"] is None
        assert single["probability"] == pytest.approx(frame["probability"], abs=1e-5)
        assert single["point"] == frame["point"]
    # Routed by the header before decoding: one decode, at the cardiac model's grid; one decision counted.
    decodes = 'normgate_compute_duration_seconds_count{model="lvot",stage="decode"}'
    assert metric_value(after, decodes) - metric_value(before, decodes) == 1
    assert metric_value(after, 'normgate_compute_duration_seconds_count{model="default",stage="decode"}') == (
        metric_value(before, 'normgate_compute_duration_seconds_count{model="default",stage="decode"}')
    )
    counted = 'normgate_decisions_total{decision="reacquire",model="lvot",reason="none"}'
    assert metric_value(after, counted) - metric_value(before, counted) == 1
    # heatmap=none: the same probabilities, no maps.
    quiet_frames = quiet.json()["frames"]
    assert [f["heatmap"] for f in quiet_frames] == [None] * 6 and quiet.json()["point"] is None
    np.testing.assert_allclose([f["probability"] for f in quiet_frames], probabilities, atol=1e-5)
    # ?model= overrides the header: the chest stand-in at its own grid.
    assert chest.status_code == 200 and chest.json()["model"]["name"] == "default"
    np.testing.assert_allclose(
        [f["probability"] for f in chest.json()["frames"]], expected_probabilities(root / "default", FRAMES), atol=1e-5
    )


def test_unassessable_frames_are_left_out_and_an_all_blank_cine_is_unassessable(models):
    root, probabilities = models
    partly = FRAMES.copy()
    partly[[1, 4]] = 1000  # two constant frames: blank
    blank = np.full_like(FRAMES, 1000)

    async def scenario():
        async with running_app(create_app(settings_for(root))) as client:
            one = await client.post("/assess", content=enhanced_mr(partly), headers=DICOM)
            two = await client.post("/assess", content=enhanced_mr(blank), headers=DICOM)
            zero = await client.post("/assess", content=enhanced_mr(FRAMES, number_of_frames=0), headers=DICOM)
        return one.json(), two.json(), zero.json()

    one, two, zero = asyncio.run(scenario())
    assert [f["reason"] for f in one["frames"]] == [None, "blank", None, None, "blank", None]
    assert [f["probability"] is None for f in one["frames"]] == [False, True, False, False, True, False]
    kept = [0, 2, 3, 5]
    np.testing.assert_allclose([one["frames"][i]["probability"] for i in kept], probabilities[kept], atol=1e-5)
    best = kept[int(np.argmax(probabilities[kept]))]
    assert one["worst_frame"] == best and one["probability"] == pytest.approx(probabilities[best], abs=1e-5)
    assert one["decision"] == ("reacquire" if probabilities[best] >= one["threshold"] else "accept")
    assert (two["decision"], two["reason"], two["worst_frame"], two["probability"]) == (
        "unassessable",
        "blank",
        None,
        None,
    )
    assert [f["decision"] for f in two["frames"]] == ["unassessable"] * 6 and two["heatmap"] is None
    assert (zero["decision"], zero["reason"], zero["frames"]) == ("unassessable", "no_frames", None)


def test_a_cine_counts_as_its_frames_against_the_queue_and_the_frame_limit(models):
    root, _ = models
    gate = Gate()

    async def scenario():
        settings = settings_for(root, max_batch_size=4, max_queue_size=8, max_frames=10)
        app = create_app(settings, batch_hook=gate)
        async with running_app(app) as client:
            gate.close()
            held = asyncio.ensure_future(client.post("/assess", content=mr_series(FRAMES)[0], headers=DICOM))
            await asyncio.to_thread(gate.entered.wait, 30)  # the worker holds that one batch
            queued = asyncio.ensure_future(client.post("/assess", content=enhanced_mr(FRAMES), headers=DICOM))
            worker = app.state.registry.get("lvot")
            while worker.queue_depth != 6:
                await asyncio.sleep(0.01)
            depth = metric_value((await client.get("/metrics")).text, "normgate_queue_depth", 'model="lvot"')
            full = await client.post("/assess", content=enhanced_mr(FRAMES), headers=DICOM)  # 6 + 6 > 8
            too_many = await client.post("/assess", content=enhanced_mr(cine_frames(9, 40, 56)), headers=DICOM)
            over_limit = await client.post("/assess", content=enhanced_mr(cine_frames(11, 40, 56)), headers=DICOM)
            gate.opened.set()
            return depth, full, too_many, over_limit, await held, await queued

    depth, full, too_many, over_limit, held, queued = asyncio.run(scenario())
    assert depth == 6
    assert full.status_code == 503 and full.json()["error"] == "overloaded" and "Retry-After" in full.headers
    assert "the 6 frames do not fit in 8" in full.json()["detail"]
    assert too_many.status_code == 413 and too_many.json()["error"] == "too_large"
    assert "has 9 frames; model 'lvot' queues at most 8 images (NORMGATE_MAX_QUEUE_SIZE)" in too_many.json()["detail"]
    assert over_limit.status_code == 413
    assert over_limit.json()["detail"] == "the DICOM declares 11 frames; at most 10 are assessed per instance"
    assert held.status_code == 200 and queued.status_code == 200 and len(queued.json()["frames"]) == 6


def test_a_number_of_frames_that_does_not_match_the_data_is_a_clear_400(models):
    root, _ = models
    data = np.ascontiguousarray(FRAMES).tobytes()

    async def scenario():
        async with running_app(create_app(settings_for(root))) as client:
            return await client.post(
                "/assess", content=enhanced_mr(FRAMES, number_of_frames=8, pixel_data=data), headers=DICOM
            )

    response = asyncio.run(scenario())
    assert response.status_code == 400 and response.json()["error"] == "bad_image"
    assert "Number of Frames does not match the pixel data" in response.json()["detail"]
