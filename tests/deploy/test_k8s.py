"""deploy/k8s validated against the official Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields are errors), on the `kubectl kustomize` output where kubectl is installed, else on each listed file; then
the wiring between objects: probes, GPU, security, Service/PDB selectors, HPA metric <-> prometheus-adapter rule
<-> live /metrics, and the Indexed evaluation Job <-> the real `python -m service.evaluate` command line."""

from __future__ import annotations

import inspect
import itertools
import re
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import CORE_METRICS, DEPLOY, SETTINGS, metric_families, run_tool

K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = [K8S, K8S / "evaluation"]
# Oldest release the manifests promise to work on (preStop sleep action, Job backoffLimitPerIndex) and the
# newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def build(kustomization_dir) -> list[dict]:
    """Rendered objects: `kubectl kustomize` when available, otherwise the listed resources as they are."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        result = subprocess.run(
            [kubectl, "kustomize", str(kustomization_dir)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    kustomization = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text())
    return [
        d
        for name in kustomization["resources"]
        for d in yaml.safe_load_all((kustomization_dir / name).read_text())
        if d
    ]


OBJECTS = {d.name: build(d) for d in KUSTOMIZATIONS}
ALL = [obj for objs in OBJECTS.values() for obj in objs]


def find(kind: str, name: str | None = None) -> dict:
    matches = [o for o in ALL if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def containers(obj: dict) -> list[dict]:
    spec = obj["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def test_every_manifest_file_is_in_a_kustomization():
    for folder in KUSTOMIZATIONS:
        listed = set(yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"])
        present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert present == listed, f"{folder}: files {present} vs kustomization resources {listed}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("obj", ALL, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_manifest_matches_the_official_schema(obj: dict, version: str):
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(
            f"{obj['kind']}/{obj['metadata']['name']} against Kubernetes {version}: {exc.message} "
            f"at {'.'.join(map(str, exc.path))}"
        )


def test_strict_validation_rejects_an_unknown_field():
    # The check above can fail: a misspelt field in the Deployment is refused.
    broken = yaml.safe_load(yaml.safe_dump(find("Deployment", "normgate")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_deployment_probes_gpu_resources_and_security():
    deployment = find("Deployment", "normgate")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert port_names["http"] == int(env["NORMGATE_PORT"]) and env["NORMGATE_HOST"] == "0.0.0.0"
    # Traffic and the end of the start-up grace wait for warm-up; only liveness asks "is the process alive".
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in port_names
    # A slow model load must not get the pod killed: startup allows minutes, liveness only after that.
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120

    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(c["resources"]["requests"]["nvidia.com/gpu"]) == "1"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]

    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # With a read-only root, the writable paths are emptyDirs: /tmp, the data dir and the state dir (outbox).
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    for path in ("/tmp", env["NORMGATE_DATA_DIR"], env["NORMGATE_STATE_DIR"]):
        assert "emptyDir" in volumes[mounts[path]], path
    assert set(env) <= SETTINGS, set(env) - SETTINGS


def _cpus(quantity) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_termination_grace_covers_prestop_drain_outbox_and_worker_shutdown():
    """preStop + NORMGATE_SHUTDOWN_GRACE_S + the outbox sender's stop + worker shutdown (request timeout + 5 s)
    + 5 s of margin, with the numbers the manifest sets (the service's own defaults where it sets none)."""
    from service.api.routes.dicomweb import stop_dicomweb
    from service.config import Settings

    pod = find("Deployment", "normgate")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    defaults = Settings()
    grace_s = float(env.get("NORMGATE_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s))
    timeout_s = float(env.get("NORMGATE_REQUEST_TIMEOUT_MS", defaults.request_timeout_ms)) / 1000
    outbox_stop_s = inspect.signature(stop_dicomweb).parameters["timeout_s"].default
    pre_stop_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop_s + grace_s + outbox_stop_s + (timeout_s + 5) + 5
    assert pod["terminationGracePeriodSeconds"] >= needed, (pod["terminationGracePeriodSeconds"], needed)


def test_cpu_requests_and_limits_match_the_threads():
    (c,) = find("Deployment", "normgate")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    limit, request = _cpus(c["resources"]["limits"]["cpu"]), _cpus(c["resources"]["requests"]["cpu"])
    threads = int(env["NORMGATE_TORCH_THREADS"]) + int(env["NORMGATE_DECODE_WORKERS"]) + 1  # + the event loop
    assert request == limit == threads, (request, limit, threads)


def test_the_api_keys_secret_is_required():
    (c,) = find("Deployment", "normgate")["spec"]["template"]["spec"]["containers"]
    [keys] = [e for e in c["env"] if e["name"] == "NORMGATE_API_KEYS"]
    reference = keys["valueFrom"]["secretKeyRef"]
    assert reference["name"] == "normgate-api-keys" and reference.get("optional", False) is False


def test_service_and_pdb_select_the_deployment_pods():
    deployment = find("Deployment", "normgate")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = find("Service", "normgate")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert all(p["targetPort"] in container_ports for p in service["spec"]["ports"])
    pdb = find("PodDisruptionBudget", "normgate")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = find("HorizontalPodAutoscaler", "normgate")
    # A node drain must always be possible: more replicas than the PDB keeps.
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


def _adapter_rules() -> list[dict]:
    config_map = find("ConfigMap", "prometheus-adapter-normgate")
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def _exposed_name(rule: dict) -> str:
    """The custom-metrics name prometheus-adapter derives from a rule (name.matches -> name.as)."""
    series_metric = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"]).group(1)
    naming = rule.get("name", {})
    pattern = naming.get("matches", "(.*)")
    replacement = naming.get("as", "${1}" if "(" in pattern else series_metric)
    return re.sub(pattern, replacement.replace("${", "\\g<").replace("}", ">"), series_metric)


def test_hpa_scales_on_the_queue_depth_that_prometheus_adapter_exposes(live_app):
    hpa = find("HorizontalPodAutoscaler", "normgate")
    deployment = find("Deployment", "normgate")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "normgate_queue_depth"

    rules = [r for r in _adapter_rules() if _exposed_name(r) == metric["pods"]["metric"]["name"]]
    assert len(rules) == 1, "prometheus-adapter exposes no (or several) metrics under the HPA's name"
    rule = rules[0]
    series_metric = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"]).group(1)
    assert series_metric in CORE_METRICS and CORE_METRICS[series_metric] == "gauge"
    assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"
    assert rule["resources"]["overrides"]["namespace"]["resource"] == "namespace"
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
    # The series exists, as a gauge, on what the service really serves.
    assert metric_families(live_app.metrics_text()).get(series_metric) == "gauge"


def test_adapter_name_derivation():
    assert (
        _exposed_name({"seriesQuery": "foo_total{a!=''}", "name": {"matches": "^(.*)_total$", "as": "${1}_per_s"}})
        == "foo_per_s"
    )
    assert _exposed_name({"seriesQuery": "normgate_queue_depth{pod!=''}"}) == "normgate_queue_depth"


def _help(*args: str) -> str:
    result = run_tool([sys.executable, "-m", "service.evaluate", *args, "--help"], timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_evaluation_is_an_indexed_job_with_a_merge_step_the_cli_accepts():
    job = find("Job", "normgate-evaluate")
    merge = find("Job", "normgate-evaluate-merge")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"]
    shards = spec["completions"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "service.evaluate"]
    args = list(c["args"])
    flags = dict(itertools.pairwise(args))
    assert flags["--shard"] == f"$(JOB_COMPLETION_INDEX)/{shards}"
    assert "$(JOB_COMPLETION_INDEX)" in flags["--out"]
    env = {e["name"]: e for e in c["env"]}
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"

    # Every flag the Job passes is one the real CLI offers.
    run_help = _help()
    for flag in (a for a in args if a.startswith("--")):
        assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", run_help), f"service.evaluate has no {flag}"

    (m,) = merge["spec"]["template"]["spec"]["containers"]
    assert m["command"] == ["python", "-m", "service.evaluate", "merge"]
    merge_help = _help("merge")
    assert "--out" in merge_help
    shard_dirs = [a for a in m["args"] if not a.startswith("--") and a != m["args"][m["args"].index("--out") + 1]]
    assert shard_dirs == [flags["--out"].replace("$(JOB_COMPLETION_INDEX)", str(i)) for i in range(shards)]
    # The merge waits for exactly that many shard results before it runs.
    (wait,) = merge["spec"]["template"]["spec"]["initContainers"]
    assert f"-ge {shards} ]" in wait["command"][-1] and "activeDeadlineSeconds" in merge["spec"]

    # Shards and merge see the same results volume.
    def claim(obj, mount_path):
        pod = obj["spec"]["template"]["spec"]
        name = next(
            mt["name"] for ct in pod["containers"] for mt in ct["volumeMounts"] if mt["mountPath"] == mount_path
        )
        return next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if v["name"] == name)

    assert claim(job, "/results") == claim(merge, "/results")
    assert {claim(job, "/results"), claim(job, "/data")} <= {
        o["metadata"]["name"] for o in ALL if o["kind"] == "PersistentVolumeClaim"
    }


def test_every_pod_runs_non_root_with_a_read_only_root_filesystem():
    for obj in (o for o in ALL if o["kind"] in ("Deployment", "Job")):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False
        for c in containers(obj):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, (obj["metadata"]["name"], c["name"])
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["image"].startswith("normgate:") and not c["image"].endswith(":latest")
