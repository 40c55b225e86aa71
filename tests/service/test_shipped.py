"""What ships, as it ships: ``python -m service`` with ``make run``'s settings on ``models/checkpoints/`` exactly as
committed, every endpoint called, every answer checked against its response schema.

Fixture checkpoints cannot catch a shipped ``model.json`` the server chokes on (``GET /models`` once answered 500
on the committed checkpoint while every fixture-based test passed). Only NORMGATE_PORT (a free port) and
NORMGATE_DATA_DIR (a folder with a small synthetic data set for /evaluate) differ from ``make run``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from models.checkpoint import read_metadata
from models.saliency import list_methods
from models.synth import generate
from service.dicomweb.multipart import build_multipart_related, parse_multipart_related, stow_boundary
from service.schemas import AssessResponse, HealthResponse, MethodsResponse, ModelsResponse, ReadyResponse
from tests.helpers import LVOT_SERVES, REPO, jpeg_bytes, png_bytes
from tests.service.dicom_factory import chest_like, dx_instance

SHIPPED = REPO / "models" / "checkpoints"
# Guided IG and XRAI take tens of seconds on a busy 2-core CPU.
SLOW_CLIENT = httpx.Timeout(600.0, connect=10.0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("shipped")
    data = base / "data"
    generate(data / "synth", 0, 0, 4, size=256, seed=5, progress=False)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMGATE_")}
    env.update(NORMGATE_PORT=str(port), NORMGATE_DATA_DIR=str(data), PYTHONUNBUFFERED="1")
    log_path = base / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"the server exited ({proc.returncode}): {log_path.read_text()[-2000:]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready after 300 s: {log_path.read_text()[-2000:]}"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=SLOW_CLIENT) as c:
        yield c


def _radiograph() -> np.ndarray:
    rows, cols = np.mgrid[0:320, 0:300]
    image = 70 + 90 * np.exp(-(((rows - 160) / 120.0) ** 2 + ((cols - 150) / 100.0) ** 2))
    image[100:110, 90:100] = 250
    return image.clip(0, 255).astype(np.uint8)


def test_probes_pages_and_metadata(client: httpx.Client):
    assert HealthResponse.model_validate(client.get("/healthz").json()).status == "ok"
    assert ReadyResponse.model_validate(client.get("/readyz").json()).models == {
        p.name: "ready" for p in SHIPPED.iterdir() if (p / "model.json").is_file()
    }
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/viewer/viewer.js").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "NormGate"
    assert client.get("/docs").status_code == 200

    models = ModelsResponse.model_validate(client.get("/models").json())
    shipped = {p.name: read_metadata(p) for p in SHIPPED.iterdir() if (p / "model.json").is_file()}
    assert {m.name for m in models.models} == set(shipped) and models.default in shipped
    for info in models.models:
        # GET /models shows model.json as committed (the name is the folder's).
        committed = shipped[info.name].model_dump()
        assert info.model_dump(exclude={"device", "state", "default"}) == {**committed, "name": info.name}
        assert info.state == "ready" and info.device == "cpu"

    methods = MethodsResponse.model_validate(client.get("/methods").json())
    assert methods.methods == list_methods() and methods.default in methods.methods

    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    assert 'normgate_model_info{arch="' in metrics.text


@pytest.mark.parametrize(
    "kind", ["png", "jpeg", "dicom-monochrome1", "multipart", "heatmap-none", "render", "octet-stream"]
)
def test_assess_every_input_kind(client: httpx.Client, kind: str):
    pixels = _radiograph()
    bodies = {
        "png": (png_bytes(pixels), "image/png"),
        "jpeg": (jpeg_bytes(pixels), "image/jpeg"),
        "dicom-monochrome1": (dx_instance(chest_like(320, 300, bright_object=(105, 95))), "application/dicom"),
        "octet-stream": (png_bytes(pixels), "application/octet-stream"),
    }
    if kind == "multipart":
        response = client.post("/assess", files={"file": ("chest.png", png_bytes(pixels), "image/png")})
    elif kind == "render":
        response = client.post("/render", content=png_bytes(pixels), headers={"content-type": "image/png"})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (300, 320)
        return
    elif kind == "heatmap-none":
        body, media = bodies["png"]
        response = client.post("/assess", params={"heatmap": "none"}, content=body, headers={"content-type": media})
    else:
        body, media = bodies[kind]
        response = client.post("/assess", content=body, headers={"content-type": media})
    assert response.status_code == 200, response.text
    answer = AssessResponse.model_validate(response.json())
    assert answer.image.width == 300 and answer.image.height == 320
    assert 0.0 <= answer.probability <= 1.0 and answer.decision in ("accept", "reacquire")
    # The shipped model carries OOD statistics: every answer of a model that ran has its score, under the limit.
    ood = read_metadata(SHIPPED / answer.model.name).ood
    assert ood is not None and answer.ood_score is not None and 0 < answer.ood_score <= ood.threshold
    if kind == "heatmap-none":
        assert answer.heatmap is None and answer.point is None
    else:
        assert answer.heatmap is not None and answer.point is not None
        assert 0 <= answer.point.x < 300 and 0 <= answer.point.y < 320


@pytest.mark.parametrize("method", list_methods())
def test_assess_every_registered_method(client: httpx.Client, method: str):
    response = client.post(
        "/assess", params={"method": method}, content=png_bytes(_radiograph()), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    answer = AssessResponse.model_validate(response.json())
    assert answer.heatmap is not None and answer.heatmap.method == method
    heatmap = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(answer.heatmap.png_base64))))
    assert heatmap.shape == (answer.heatmap.height, answer.heatmap.width) and heatmap.dtype == np.uint8


def test_evaluate_job_on_a_small_synthetic_set(client: httpx.Client):
    started = client.post(
        "/evaluate",
        json={"data": "synth", "split": "test", "model": "default", "methods": ["normgrad-conv1x1-combined"]},
    )
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 300
    while (status := client.get(f"/evaluate/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["status"] == "done", status
    assert status["progress"]["done"] == status["progress"]["total"] == 4
    results = status["results"]
    assert set(results["methods"]["normgrad-conv1x1-combined"]) == {"default"}
    report = client.get(f"/evaluate/{job_id}/report")
    assert report.status_code == 200 and "<html" in report.text.lower()


def test_stow_then_wado_retrieves_both_result_instances(client: httpx.Client):
    instance = dx_instance(chest_like(320, 300, bright_object=(105, 95)))
    body, content_type = build_multipart_related([instance], "shippedboundary")
    stored = client.post(
        "/dicomweb/studies", content=body, headers={"content-type": content_type, "accept": "application/json"}
    )
    assert stored.status_code == 200, stored.text
    [result] = stored.json()["results"]
    AssessResponse.model_validate(result["assessment"])
    for role, sop_class in (
        ("secondary_capture", "1.2.840.10008.5.1.4.1.1.7"),
        ("structured_report", "1.2.840.10008.5.1.4.1.1.88.33"),
    ):
        answer = client.get(result[role]["retrieve_url"])
        assert answer.status_code == 200, answer.text
        [part] = parse_multipart_related(answer.content, stow_boundary(answer.headers["content-type"]), max_parts=1)
        dataset = pydicom.dcmread(io.BytesIO(part.body))
        assert dataset.SOPClassUID == sop_class and dataset.SOPInstanceUID == result[role]["sop_instance_uid"]


def test_images_the_shipped_gate_cannot_judge(client: httpx.Client):
    """A CT slice (no shipped model serves CT), a blank radiograph-sized PNG and pure noise: 200, unassessable,
    never accept; the model never ran for them, and /metrics counts each reason."""
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (640, 540)).astype(np.uint8)
    cases = [
        (ct, "application/dicom", "unsupported_modality"),
        (png_bytes(np.full((640, 540), 128, np.uint8)), "image/png", "blank"),
        (png_bytes(noise), "image/png", "blank"),
        (png_bytes(np.full((100, 80), 128, np.uint8)), "image/png", "too_small"),  # NORMGATE_MIN_IMAGE_SIDE 128
    ]
    for body, media, reason in cases:
        response = client.post("/assess", content=body, headers={"content-type": media})
        assert response.status_code == 200, response.text
        answer = AssessResponse.model_validate(response.json())
        assert (answer.decision, answer.reason, answer.label) == ("unassessable", reason, None)
        assert answer.probability is None and answer.heatmap is None and answer.ood_score is None
    metrics = client.get("/metrics").text
    for reason in ("unsupported_modality", "blank", "too_small", "out_of_distribution"):
        assert f'normgate_decisions_total{{decision="unassessable",model="default",reason="{reason}"}}' in metrics
    served = {m.name: m.serves for m in ModelsResponse.model_validate(client.get("/models").json()).models}
    assert served["default"] is not None and served["default"].modality == "CR|DX|DR"


def test_shipped_model_json_names_no_machine_path():
    for folder in SHIPPED.iterdir():
        text = (folder / "model.json").read_text() if (folder / "model.json").is_file() else ""
        for marker in ("/work/", "/root/", "/home/", "/tmp/", ":\\\\"):
            assert marker not in text, (folder.name, marker)
        if text:
            json.loads(text)  # and it is plain JSON
    assert Path(SHIPPED).is_dir()


CARDIAC = "cmr-lvot"


def _synthetic_cine(tmp_path: Path, frames: int) -> tuple[bytes, list]:
    """A synthetic LVOT-positive 4-chamber patient (models.synth.cmr, the cardiac model's own generator, a seed it
    was not trained on) as one Enhanced MR object, and its rendered frames (label and box of each)."""
    from models.synth.cmr.dicom import write_enhanced
    from models.synth.cmr.patient import is_positive, sample_patient
    from models.synth.cmr.render import CineRenderer

    index = next(i for i in range(10) if is_positive(99, "test", i))
    patient = sample_patient(99, "test", index, frames_min=frames, frames_max=frames)
    rendered = CineRenderer(patient).frames()
    return write_enhanced(patient, rendered, tmp_path / "cine.dcm").read_bytes(), rendered


def test_shipped_cardiac_model_takes_a_multi_frame_mr_cine_by_its_header(client: httpx.Client, tmp_path: Path):
    """GET /models lists both shipped models with their routing; an Enhanced MR 4-chamber cine sent to /assess
    without ?model= is answered frame by frame by the cardiac model. Each frame's probability is the model's
    own (recomputed here from the checkpoint, outside the server's queue and batching), and the series
    decision follows the aggregation rule (reacquire iff an assessable frame reaches the threshold; the
    deciding frame is the most probable one)."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.imaging.decode import decode_image
    from models.imaging.grid import preprocess_batch
    from models.imaging.limits import DecodeLimits

    served = {m.name: m for m in ModelsResponse.model_validate(client.get("/models").json()).models}
    assert {"default", CARDIAC} <= set(served)
    assert served["default"].serves is not None and served["default"].serves.modality == "CR|DX|DR"
    cardiac = served[CARDIAC]
    assert cardiac.serves is not None and cardiac.serves.model_dump(exclude_none=True) == LVOT_SERVES
    assert cardiac.classes == ["no_lvot", "lvot"] and cardiac.positive_class == "lvot"

    body, rendered = _synthetic_cine(tmp_path, frames=8)
    response = client.post("/assess", content=body, headers={"content-type": "application/dicom"})
    assert response.status_code == 200, response.text
    answer = AssessResponse.model_validate(response.json())
    assert answer.model.name == CARDIAC and answer.label is not None
    assert answer.frames is not None and [f.index for f in answer.frames] == list(range(8))

    checkpoint = load_checkpoint(SHIPPED / CARDIAC)
    meta = checkpoint.meta
    decoded = decode_image(body, "application/dicom", DecodeLimits(), multi_frame=True)
    x = preprocess_batch(list(decoded.pixels), meta.input_size, meta.mean, meta.std)
    with torch.no_grad():
        expected = torch.softmax(checkpoint.model(x).float() / meta.temperature, dim=1)[:, meta.positive_index]
    got = [f.probability for f in answer.frames]
    assert np.allclose(got, expected.numpy(), atol=2e-3), (got, expected.tolist())

    threshold = answer.threshold
    assessable = [f for f in answer.frames if f.decision != "unassessable"]
    assert assessable, [f.reason for f in answer.frames]
    for frame in assessable:
        assert frame.decision == ("reacquire" if frame.probability >= threshold else "accept")
        assert frame.heatmap is not None and frame.point is not None
        assert 0 <= frame.point.x < decoded.pixels.shape[2] and 0 <= frame.point.y < decoded.pixels.shape[1]
    worst = max(assessable, key=lambda f: f.probability)
    assert answer.worst_frame == worst.index and answer.probability == pytest.approx(worst.probability)
    assert answer.decision == ("reacquire" if worst.probability >= threshold else "accept")
    # The generator knows which frames show the tract; the model card has the test-split numbers, this one
    # patient only shows that the probabilities are not constant over the cycle.
    assert any(frame.box is not None for frame in rendered) and np.ptp(got) > 0.0
