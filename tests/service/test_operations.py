"""Metrics (the core names and labels of docs/api.md, values moving), /models, /methods, /healthz and the OpenAPI document."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from models.saliency import list_methods
from service.app import create_app
from tests.helpers import png_bytes, radiograph, settings_for, wait_ready_sync

CORE_METRICS = {  # family name → (type, label names)
    "normgate_request_duration_seconds": ("histogram", {"endpoint", "status"}),
    "normgate_queue_wait_seconds": ("histogram", {"model"}),
    "normgate_compute_duration_seconds": ("histogram", {"model", "stage"}),
    "normgate_batch_size": ("histogram", {"model"}),
    "normgate_queue_depth": ("gauge", {"model"}),
    "normgate_rejected": ("counter", {"reason"}),  # exposed as normgate_rejected_total
    "normgate_decisions": ("counter", {"model", "decision", "reason"}),  # exposed as normgate_decisions_total
    "normgate_model_info": ("gauge", {"name", "version", "arch"}),
}


@pytest.fixture(scope="module")
def client(models_dir):
    with TestClient(create_app(settings_for(models_dir))) as test_client:
        wait_ready_sync(test_client)
        yield test_client


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def sample(families, sample_name: str, **labels) -> float:
    family_name = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    for s in families[family_name].samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def test_every_core_metric_with_its_labels_and_values_moving(client):
    body = png_bytes(radiograph(64, 64, seed=1))
    client.post("/assess", content=body, headers={"content-type": "image/png"})  # every label set exists
    client.post("/assess", content=b"xx", headers={"content-type": "text/plain"})
    before = scrape(client)
    for name, (kind, labels) in CORE_METRICS.items():
        assert name in before, f"{name} missing from /metrics"
        assert before[name].type == kind
        for s in before[name].samples:
            if not s.name.endswith("_created"):
                assert set(s.labels) - {"le"} == labels, (s.name, s.labels)

    for _ in range(3):
        response = client.post("/assess", content=body, headers={"content-type": "image/png"})
        assert response.status_code == 200
    decision = response.json()["decision"]
    client.post("/assess", content=b"xx", headers={"content-type": "text/plain"})
    after = scrape(client)

    def moved(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("normgate_request_duration_seconds_count", endpoint="/assess", status="200") == 3
    assert moved("normgate_request_duration_seconds_count", endpoint="/assess", status="415") == 1
    assert moved("normgate_queue_wait_seconds_count", model="default") == 3
    for stage in ("decode", "saliency", "encode"):
        assert moved("normgate_compute_duration_seconds_count", model="default", stage=stage) == 3
    assert moved("normgate_compute_duration_seconds_count", model="default", stage="forward_backward") == 3
    assert moved("normgate_batch_size_count", model="default") == 3
    assert moved("normgate_batch_size_sum", model="default") == 3
    assert moved("normgate_decisions_total", model="default", decision=decision) == 3
    assert moved("normgate_rejected_total", reason="unsupported_media_type") == 1
    assert sample(after, "normgate_queue_depth", model="default") == 0
    assert sample(after, "normgate_model_info", name="default", version="test-1", arch="resnet18") == 1
    assert sample(after, "normgate_model_info", name="wide", version="test-wide", arch="resnet18") == 1


def test_models_lists_checkpoint_metadata(client, models_dir):
    answer = client.get("/models").json()
    assert answer["default"] == "default"
    by_name = {m["name"]: m for m in answer["models"]}
    assert set(by_name) == {"default", "wide"}
    for name, info in by_name.items():
        meta = json.loads((models_dir / name / "model.json").read_text())
        for key in (
            "version",
            "arch",
            "input_size",
            "classes",
            "positive_class",
            "threshold",
            "normgrad_layers",
            "trained_on",
        ):
            assert info[key] == meta[key], key
        assert info["device"] == "cpu" and info["state"] == "ready"
        assert info["default"] == (name == "default")


def test_methods_are_the_engine_methods(client):
    answer = client.get("/methods").json()
    assert answer["methods"] == list_methods()
    assert answer["default"] == "normgrad-conv1x1-combined" and answer["default"] in answer["methods"]


def test_openapi_documents_the_real_shapes(client):
    spec = client.get("/openapi.json").json()
    assess = spec["paths"]["/assess"]["post"]
    content = assess["requestBody"]["content"]
    assert set(content) == {"application/dicom", "image/png", "image/jpeg", "multipart/form-data"}
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    ok = assess["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/AssessResponse")
    for status in ("400", "413", "415", "422", "503", "504"):
        assert assess["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    params = {p["name"]: p for p in assess["parameters"]}
    assert params["heatmap"]["schema"]["enum"] == ["png", "none"]
    assert params["method"]["schema"]["default"] == "normgrad-conv1x1-combined"
    assert "positive class" in assess["description"]
    schema = spec["components"]["schemas"]["AssessResponse"]
    assert set(schema["required"]) >= {
        "request_id",
        "model",
        "label",
        "probability",
        "threshold",
        "decision",
        "point",
        "image",
        "heatmap",
        "timings_ms",
    }
    for path in ("/models", "/methods", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200
