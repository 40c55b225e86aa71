"""Every error of /assess (docs/api.md, "Errors") and the generic ones, as JSON {"error", "detail"} with the right status."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import dicom_bytes, png_bytes, radiograph, settings_for, wait_ready_sync

MAX_BODY_MB = 0.05  # 52 428 bytes
MAX_PIXELS = 40_000


@pytest.fixture(scope="module")
def client(models_dir):
    app = create_app(settings_for(models_dir, max_body_mb=MAX_BODY_MB, max_pixels=MAX_PIXELS))
    with TestClient(app) as test_client:
        wait_ready_sync(test_client)
        yield test_client


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10
    assert body["request_id"] == response.headers["x-request-id"]
    assert set(body) == {"error", "detail", "request_id"}
    assert "Traceback" not in response.text
    return body


def post(client, body, content_type="image/png", **params):
    return client.post("/assess", params=params, content=body, headers={"content-type": content_type})


SMALL_PNG = png_bytes(radiograph(40, 50))


def test_small_image_passes_the_limits(client):
    assert post(client, SMALL_PNG).status_code == 200


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"", "image/png"),
        (b"definitely not an image", "image/png"),
        (SMALL_PNG[: len(SMALL_PNG) // 2], "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 20, "image/jpeg"),
        (b"garbage", None),
    ],
)
def test_bad_image(client, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    assert_error(client.post("/assess", content=body, headers=headers), 400, "bad_image")


def test_dicom_without_pixel_data_is_bad_image(client):
    import io

    from pydicom import dcmread

    dataset = dcmread(io.BytesIO(dicom_bytes(radiograph(20, 20))))
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    assert_error(post(client, buffer.getvalue(), "application/dicom"), 400, "bad_image")


def test_multipart_without_a_file_field(client):
    response = client.post("/assess", data={"note": "no file here"}, files={"other": ("x.png", SMALL_PNG, "image/png")})
    body = assert_error(response, 400, "bad_image")
    assert "'file'" in body["detail"]


def test_body_over_the_limit_by_content_length(client):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * int(MAX_BODY_MB * 1024 * 1024)
    body = assert_error(post(client, big), 413, "too_large")
    assert "limit" in body["detail"]


def test_body_over_the_limit_while_streaming(client):
    chunk = b"\0" * 8192

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield chunk

    response = client.post("/assess", content=chunks(), headers={"content-type": "image/png"})
    assert_error(response, 413, "too_large")


def test_pixel_count_over_the_limit(client):
    flat = np.zeros((250, 250), dtype=np.uint8)  # 62 500 pixels, compresses to a few hundred bytes
    assert len(png_bytes(flat)) < MAX_BODY_MB * 1024 * 1024
    assert_error(post(client, png_bytes(flat)), 413, "too_large")


def test_unsupported_media_type(client):
    assert_error(post(client, SMALL_PNG, "text/plain"), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "params, word",
    [
        ({"model": "no-such-model"}, "no-such-model"),
        ({"method": "no-such-method"}, "no-such-method"),
        ({"heatmap": "jpg"}, "heatmap"),
    ],
)
def test_bad_parameters(client, params, word):
    body = assert_error(post(client, SMALL_PNG, **params), 422, "bad_parameter")
    assert word in body["detail"]


def test_multi_frame_dicom_is_assessed_per_frame_up_to_the_frame_limit(client):
    """Multi-frame DICOM is no longer refused: each frame gets its result. Past NORMGATE_MAX_FRAMES (64) it is 413,
    with a body well under the body limit so that the frame count, not the size, is what refuses it."""
    answer = post(client, dicom_bytes(radiograph(30, 30), frames=3), "application/dicom")
    assert answer.status_code == 200, answer.text
    frames = answer.json()["frames"]
    assert [frame["index"] for frame in frames] == [0, 1, 2]
    assert answer.json()["worst_frame"] in (0, 1, 2)
    too_many = dicom_bytes(radiograph(16, 16), frames=65)
    assert len(too_many) < MAX_BODY_MB * 2**20
    body = assert_error(post(client, too_many, "application/dicom"), 413, "too_large")
    assert "65 frames" in body["detail"] and "64" in body["detail"]


def test_unknown_path_and_wrong_method(client):
    assert_error(client.get("/no/such/path"), 404, "not_found")
    assert_error(client.get("/assess"), 405, "method_not_allowed")
    assert_error(client.delete("/models"), 405, "method_not_allowed")


def test_errors_are_counted_as_rejections(client):
    def rejected(reason: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'normgate_rejected_total{{reason="{reason}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = rejected("unsupported_media_type")
    post(client, SMALL_PNG, "text/plain")
    assert rejected("unsupported_media_type") == before + 1


def test_api_keys(models_dir):
    app = create_app(settings_for(models_dir, api_keys=["k-one", "k-two"]))
    with TestClient(app) as client:
        wait_ready_sync(client)
        missing = assert_error(post(client, SMALL_PNG), 401, "unauthorized")
        assert "Bearer" in missing["detail"]
        wrong = client.post(
            "/assess", content=SMALL_PNG, headers={"content-type": "image/png", "authorization": "Bearer k-three"}
        )
        assert_error(wrong, 401, "unauthorized")
        assert wrong.headers["www-authenticate"] == "Bearer"
        for key in ("k-one", "k-two"):
            ok = client.post(
                "/assess", content=SMALL_PNG, headers={"content-type": "image/png", "authorization": f"Bearer {key}"}
            )
            assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open (issue 6 makes this configurable)
