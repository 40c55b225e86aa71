"""POST /assess end to end against the real app and a tiny seeded checkpoint.

Expected values come from running the checkpoint directly (load_checkpoint → preprocess_batch → model /
explain), not from the service's code: probability, the peak point mapped to original pixels, the heatmap PNG.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.checkpoint import load_checkpoint
from models.imaging.grid import grid_point_to_original, preprocess_batch
from models.saliency import explain
from service.app import create_app
from tests.helpers import (
    dicom_bytes,
    heatmap_array,
    jpeg_bytes,
    png_bytes,
    radiograph,
    settings_for,
    wait_ready_sync,
)

DEFAULT_METHOD = "normgrad-conv1x1-combined"


@pytest.fixture(scope="module")
def client(models_dir):
    app = create_app(settings_for(models_dir))
    with TestClient(app) as test_client:
        wait_ready_sync(test_client)
        yield test_client


class Reference:
    """What a checkpoint says about an image, computed without the service."""

    def __init__(self, folder):
        checkpoint = load_checkpoint(folder)
        self.model, self.meta = checkpoint.model, checkpoint.meta

    def __call__(self, gray: np.ndarray, method: str = DEFAULT_METHOD):
        meta = self.meta
        x = preprocess_batch([gray], meta.input_size, meta.mean, meta.std)
        with torch.no_grad():
            probability = torch.softmax(self.model(x), dim=1)[0, meta.positive_index].item()
        saliency = explain(self.model, x, method, target=meta.positive_index)[0].numpy()
        row, col = np.unravel_index(np.argmax(saliency), saliency.shape)
        point = grid_point_to_original(col, row, meta.input_size, gray.shape)
        return probability, {"x": point[0], "y": point[1]}, saliency


@pytest.fixture(scope="module")
def reference(models_dir):
    return Reference(models_dir / "default")


@pytest.fixture(scope="module")
def wide_reference(models_dir):
    return Reference(models_dir / "wide")


def post_image(client, body: bytes, content_type: str, **params):
    return client.post("/assess", params=params, content=body, headers={"content-type": content_type})


def expected_heatmap(saliency: np.ndarray) -> np.ndarray:
    low, high = saliency.min(), saliency.max()
    return np.rint((saliency - low) / (high - low) * 255).astype(np.int16)


def test_png_answer_matches_the_checkpoint_run_directly(client, reference):
    gray = radiograph(120, 200, seed=3, spot=(30, 150))  # non-square: 200 wide, 120 high
    response = post_image(client, png_bytes(gray), "image/png")
    assert response.status_code == 200, response.text
    answer = response.json()
    probability, point, saliency = reference(gray)

    assert answer["request_id"] == response.headers["x-request-id"]
    assert len(answer["request_id"]) == 32 and int(answer["request_id"], 16) >= 0
    assert answer["model"] == {"name": "default", "version": "test-1", "arch": "resnet18"}
    assert answer["probability"] == pytest.approx(probability, abs=1e-5)
    assert answer["threshold"] == 0.5
    assert answer["decision"] == ("reacquire" if probability >= 0.5 else "accept")
    assert answer["label"] == ("foreign_object" if probability >= 0.5 else "no_foreign_object")
    assert answer["point"] == point
    assert answer["image"] == {"width": 200, "height": 120}
    assert answer["heatmap"]["method"] == DEFAULT_METHOD
    assert (answer["heatmap"]["width"], answer["heatmap"]["height"]) == (64, 64)
    got = heatmap_array(answer)
    assert got.shape == (64, 64)
    assert np.abs(got.astype(np.int16) - expected_heatmap(saliency)).max() <= 1
    assert got.min() == 0 and got.max() == 255
    timings = answer["timings_ms"]
    assert set(timings) == {"queue", "compute", "total"}
    assert 0 <= timings["queue"] <= timings["total"] and 0 < timings["compute"] <= timings["total"]
    assert set(answer) == {
        "request_id",
        "assessment_id",
        "model",
        "label",
        "probability",
        "threshold",
        "calibration",
        "decision",
        "reason",
        "ood_score",
        "point",
        "image",
        "heatmap",
        "frames",
        "worst_frame",
        "timings_ms",
    }
    # One image: its decision is named by the request id; an ordinary decision has no reason, no frames, and
    # this fixture checkpoint has neither a calibration nor OOD statistics.
    assert answer["assessment_id"] == answer["request_id"]
    assert [answer[k] for k in ("reason", "calibration", "ood_score", "frames", "worst_frame")] == [None] * 5


def test_non_square_grid_and_threshold_of_another_model(client, wide_reference):
    # The 'wide' checkpoint has a 64 × 96 grid (h × w) and a 0.995 threshold.
    gray = radiograph(150, 310, seed=4, spot=(120, 40))
    answer = post_image(client, png_bytes(gray), "image/png", model="wide").json()
    probability, point, _saliency = wide_reference(gray)
    assert answer["model"]["name"] == "wide"
    assert (answer["heatmap"]["width"], answer["heatmap"]["height"]) == (96, 64)
    assert heatmap_array(answer).shape == (64, 96)
    assert answer["point"] == point
    assert answer["probability"] == pytest.approx(probability, abs=1e-5)
    assert answer["threshold"] == 0.995
    assert answer["decision"] == ("reacquire" if probability >= 0.995 else "accept")
    assert answer["label"] == ("foreign_object" if probability >= 0.995 else "no_foreign_object")


def test_point_maps_grid_peak_to_original_pixels_on_a_tall_image(client, reference):
    # A tall image squeezed 4× vertically and 1.5× horizontally into the 64 × 64 grid.
    gray = radiograph(256, 96, seed=5, spot=(200, 20))
    answer = post_image(client, png_bytes(gray), "image/png").json()
    _, point, saliency = reference(gray)
    row, col = np.unravel_index(np.argmax(saliency), saliency.shape)
    # pixel centres align: grid x → (x + 0.5) * 96 / 64 - 0.5, grid y → (y + 0.5) * 256 / 64 - 0.5
    assert point == {"x": round((col + 0.5) * 1.5 - 0.5), "y": round((row + 0.5) * 4 - 0.5)}
    assert answer["point"] == point


def test_jpeg_body(client, reference):
    gray = radiograph(90, 110, seed=6)
    body = jpeg_bytes(gray)
    decoded = np.asarray(Image.open(io.BytesIO(body)).convert("L"))  # what a JPEG decoder returns
    answer = post_image(client, body, "image/jpeg").json()
    probability, point, _ = reference(decoded)
    assert answer["probability"] == pytest.approx(probability, abs=1e-5)
    assert answer["point"] == point
    assert answer["image"] == {"width": 110, "height": 90}


def test_multipart_upload_equals_raw_upload(client):
    body = png_bytes(radiograph(80, 100, seed=7))
    raw = post_image(client, body, "image/png").json()
    form = client.post("/assess", files={"file": ("chest.png", body, "image/png")}).json()
    unlabelled = client.post("/assess", files={"file": ("chest", body, "application/octet-stream")}).json()
    for answer in (form, unlabelled):
        assert answer["probability"] == raw["probability"]
        assert answer["point"] == raw["point"]
        assert answer["heatmap"]["png_base64"] == raw["heatmap"]["png_base64"]


def test_dicom_raw_and_multipart_equal_the_png_of_the_same_pixels(client):
    gray = radiograph(100, 140, seed=8)
    gray[0, 0], gray[-1, -1] = 0, 255  # full range: the DICOM min–max window then equals PNG's /255
    from_png = post_image(client, png_bytes(gray), "image/png").json()
    body = dicom_bytes(gray)
    raw = post_image(client, body, "application/dicom").json()
    form = client.post("/assess", files={"file": ("chest.dcm", body, "application/dicom")}).json()
    for answer in (raw, form):
        assert answer["image"] == {"width": 140, "height": 100}
        assert answer["probability"] == pytest.approx(from_png["probability"], abs=1e-6)
        assert answer["point"] == from_png["point"]


def test_monochrome1_equals_monochrome2_of_the_inverted_pixels(client):
    # MONOCHROME1 stores "bright = low value"; after inversion the model must see the same image.
    gray16 = radiograph(90, 70, seed=13, spot=(30, 40)).astype(np.uint16) * 250
    gray16[0, 0], gray16[-1, -1] = 0, 63750
    normal = post_image(client, dicom_bytes(gray16), "application/dicom").json()
    inverted = post_image(client, dicom_bytes(63750 - gray16, photometric="MONOCHROME1"), "application/dicom").json()
    assert inverted["probability"] == pytest.approx(normal["probability"], abs=1e-6)
    assert inverted["point"] == normal["point"]
    assert inverted["heatmap"]["png_base64"] == normal["heatmap"]["png_base64"]


def test_sixteen_bit_dicom(client, reference):
    gray16 = radiograph(64, 80, seed=9).astype(np.uint16) * 200
    gray16[0, 0] = 0
    answer = post_image(client, dicom_bytes(gray16), "application/dicom").json()
    unit = gray16.astype(np.float32) / gray16.max()  # no window in the file: min–max over the pixels
    probability, point, _ = reference(unit)
    assert answer["probability"] == pytest.approx(probability, abs=1e-5)
    assert answer["point"] == point


def test_other_saliency_method(client, reference):
    gray = radiograph(70, 90, seed=10, spot=(20, 60))
    answer = post_image(client, png_bytes(gray), "image/png", method="gradcam").json()
    _, point, _ = reference(gray, method="gradcam")
    assert answer["heatmap"]["method"] == "gradcam"
    assert answer["point"] == point


def test_same_input_same_output(client):
    body = png_bytes(radiograph(100, 100, seed=11))
    first = post_image(client, body, "image/png").json()
    second = post_image(client, body, "image/png").json()
    for key in ("probability", "point", "heatmap", "decision", "label", "image", "model"):
        assert first[key] == second[key]
    assert first["request_id"] != second["request_id"]


def test_heatmap_none_runs_forward_only(client):
    body = png_bytes(radiograph(100, 120, seed=12))
    model = client.app.state.registry.get("default").runner.model
    forward_outputs = []
    backward_calls = []

    def watch(module, inputs, output):
        forward_outputs.append((output.requires_grad, torch.is_inference_mode_enabled()))
        if output.requires_grad:
            output.register_hook(lambda grad: backward_calls.append(grad.shape))

    handle = model.fc.register_forward_hook(watch)
    try:
        plain = post_image(client, body, "image/png", heatmap="none").json()
        assert forward_outputs == [(False, True)] and backward_calls == []
        explained = post_image(client, body, "image/png").json()
        assert backward_calls, "the heatmap request should have run a backward pass"
    finally:
        handle.remove()
    assert plain["heatmap"] is None and plain["point"] is None
    assert plain["probability"] == pytest.approx(explained["probability"], abs=1e-6)
    assert plain["decision"] == explained["decision"] and plain["image"] == explained["image"]
