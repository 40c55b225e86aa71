"""docker-compose.yml (and the CPU override) against the official compose-spec schema bundled in check-jsonschema,
then what the one-box set-up needs: the four services, GPU reservations, healthchecks, mounts that exist, and
Prometheus scraping the names and ports compose gives the containers."""

from __future__ import annotations

import json
import re
from importlib import resources

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO, SETTINGS, require_binary, run_tool

COMPOSE_PATH = REPO / "docker-compose.yml"
CPU_OVERRIDE_PATH = DEPLOY / "compose" / "cpu.yml"
COMPOSE = yaml.safe_load(COMPOSE_PATH.read_text())
SERVICES = COMPOSE["services"]


class ComposeLoader(yaml.SafeLoader):
    """PyYAML plus compose's `!reset` / `!override` merge tags (they only steer how files are merged)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)
ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_sequence(node)
    ),
)


def compose_schema() -> dict:
    path = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text())


def gpu_reservation(service: dict) -> dict:
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    return device


def test_check_jsonschema_validates_the_compose_file():
    tool = require_binary("check-jsonschema")
    result = run_tool([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_PATH)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_override_matches_the_compose_schema():
    override = yaml.load(CPU_OVERRIDE_PATH.read_text(), Loader=ComposeLoader)
    jsonschema.validate(override, compose_schema())
    normgate = override["services"]["normgate"]
    # !override: the CPU limits replace the whole deploy block, GPU reservation included
    assert normgate["deploy"] == {"resources": {"limits": {"cpus": "4", "memory": "8g"}}}
    assert normgate["build"]["args"]["DEVICE"] == "cpu"
    assert cpu_budget(normgate["environment"]) <= float(normgate["deploy"]["resources"]["limits"]["cpus"])
    assert override["services"]["dcgm-exporter"]["profiles"] == ["gpu"]


def test_schema_check_can_fail():
    broken = yaml.safe_load(COMPOSE_PATH.read_text())
    broken["services"]["normgate"]["healthcheck"]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())


def compose_default(value: str) -> str:
    """The default of a ``${VAR:-default}`` value (or the value itself)."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", str(value))
    return match.group(1) if match else str(value)


def cpu_budget(environment: dict) -> float:
    """CPUs the service keeps busy: torch threads + decode workers + 1 (event loop, result building)."""
    threads = int(compose_default(environment["NORMGATE_TORCH_THREADS"]))
    return threads + int(compose_default(environment["NORMGATE_DECODE_WORKERS"])) + 1


def test_the_services_are_there():
    assert {"normgate", "prometheus", "alertmanager", "grafana", "dcgm-exporter"} <= set(SERVICES)


def test_normgate_service():
    svc = SERVICES["normgate"]
    assert svc["build"]["context"] == "." and (REPO / "Dockerfile").is_file()
    assert svc["build"]["args"]["DEVICE"] == "gpu"
    device = gpu_reservation(svc)
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    # Falls back to the CPU when no GPU is visible (and deploy/compose/cpu.yml drops the reservation).
    assert compose_default(svc["environment"]["NORMGATE_DEVICE"]) == "auto"
    # Every setting passes through (a value or a ${VAR:-default} here, or empty = taken from the shell/.env).
    assert set(svc["environment"]) == SETTINGS, set(svc["environment"]) ^ SETTINGS
    assert svc["environment"]["NORMGATE_DICOMWEB_PUSH_URL"] is None  # set it in the shell or .env
    assert svc["environment"]["NORMGATE_STATE_DIR"] == "/state" and "normgate-state:/state" in svc["volumes"]
    assert cpu_budget(svc["environment"]) <= float(svc["deploy"]["resources"]["limits"]["cpus"])
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and any("/readyz" in part for part in test)
    assert svc["read_only"] is True and any(t.startswith("/tmp") for t in svc["tmpfs"])
    assert svc["user"].split(":")[0] not in ("0", "root")
    assert svc["ports"][0].endswith(":" + svc["environment"]["NORMGATE_PORT"])


def test_every_service_has_a_healthcheck_or_is_an_exporter_and_images_are_pinned():
    for name, svc in SERVICES.items():
        if "image" in svc and "build" not in svc:
            image = svc["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: {image}"
        if name != "dcgm-exporter":
            assert "healthcheck" in svc, name


def test_bind_mounts_exist():
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} missing"


def test_prometheus_scrapes_the_compose_services_and_loads_the_rules():
    svc = SERVICES["prometheus"]
    mounts = dict(v.split(":")[:2] for v in svc["volumes"])
    assert mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in svc["command"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    port = SERVICES["normgate"]["environment"]["NORMGATE_PORT"]
    assert targets["normgate"] == [f"normgate:{port}"]
    assert targets["dcgm"] == ["dcgm-exporter:9400"] and "9400" in SERVICES["dcgm-exporter"]["expose"]
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


def test_dcgm_exporter_gets_the_gpus_and_grafana_is_provisioned():
    device = gpu_reservation(SERVICES["dcgm-exporter"])
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    grafana = SERVICES["grafana"]
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_alertmanager_gets_the_config_prometheus_sends_to():
    svc = SERVICES["alertmanager"]
    mounts = dict(v.split(":")[:2] for v in svc["volumes"])
    assert mounts["./deploy/alertmanager"] == "/etc/alertmanager"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in svc["command"]
    assert (DEPLOY / "alertmanager" / "alertmanager.yml").is_file()
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [target] = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == "alertmanager:9093" and svc["ports"][0].endswith(":9093")
