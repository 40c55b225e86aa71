"""deploy/grafana: provisioning wired to the compose stack, and every PromQL expression of the dashboard parsed by
promtool and naming only metrics that exist (the service's families, on the live /metrics too, the recording rules,
NVIDIA dcgm-exporter's DCGM_FI_* or kube-state-metrics)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.conftest import CORE_METRICS, DEPLOY, REPO, metric_families, require_binary, run_tool

GRAFANA = DEPLOY / "grafana"
DASHBOARD_PATH = GRAFANA / "dashboards" / "normgate.json"
DASHBOARD = json.loads(DASHBOARD_PATH.read_text())

# Grafana's own macros and this dashboard's variables, replaced by values Prometheus accepts.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${model}": ".*",
    "$model": ".*",
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
DCGM_REQUIRED = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"}
# kube-state-metrics series the restart panel reads (Kubernetes only; docs/operations.md, "Alerts").
KUBE_STATE_METRICS = {"kube_pod_container_status_restarts_total"}


def _service_families() -> dict[str, str]:
    """Every family the service registers ({name: type}), from an unused ServiceMetrics."""
    from service.observability.metrics import ServiceMetrics

    return {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in ServiceMetrics().registry.collect()
    }


SERVICE_METRICS = {**_service_families(), **CORE_METRICS}
# Series recorded by either rule file (the decision-rate records live beside their alerts in alert_rules.yml).
RECORDED = {
    rule["record"]
    for name in ("recording_rules.yml", "alert_rules.yml")
    for group in yaml.safe_load((DEPLOY / "prometheus" / name).read_text())["groups"]
    for rule in group["rules"]
    if "record" in rule
}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every Prometheus query of the dashboard, template variables included."""
    found = []
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} '{panel['title']}' {target['refId']}", target["expr"]))
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']}", variable["definition"]))
    return found


def to_promql(expr: str) -> str:
    for macro, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    # label_values(metric, label) is Grafana's variable query, not PromQL: check the metric selector part.
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr)
    return match.group(1) if match else expr


def metric_names(promql: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)  # label lists
    s = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", "", s)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        following = s[m.end() :].lstrip()[:1]
        if following != "(" and m.group(0).lower() not in PROMQL_WORDS:
            names.add(m.group(0))
    return names


def family_of(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and SERVICE_METRICS.get(base) == "histogram":
            return base
    return name


def promtool_check_exprs(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Parse expressions with Prometheus' own parser: each becomes a recording rule, checked by promtool."""
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    return run_tool([require_binary("promtool"), "check", "rules", str(path)])


def test_dashboard_has_the_panels_operators_need():
    titles = " | ".join(p["title"].lower() for p in DASHBOARD["panels"])
    for needed in (
        "request rate",
        "error ratio",
        "latency quantiles",
        "queue depth",
        "queue wait vs compute",
        "batch size distribution",
        "decisions per model",
        "decisions by kind",
        "re-acquire share",
        "outbox: pending sets",
        "outbox: oldest pending set",
        "result delivery outcomes",
        "restarts",
        "gpu utilisation",
        "gpu memory",
    ):
        assert needed in titles, f"no panel about {needed!r}: {titles}"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    batch = next(p for p in DASHBOARD["panels"] if "batch size distribution" in p["title"].lower())
    assert batch["type"] == "heatmap" and batch["targets"][0]["format"] == "heatmap"
    assert "normgate_batch_size_bucket" in batch["targets"][0]["expr"]


def test_no_panel_mixes_units():
    """A panel has one axis: batch sizes and seconds (or counts and ages) never share one."""
    for panel in DASHBOARD["panels"]:
        exprs = " ".join(t["expr"] for t in panel.get("targets", []))
        seconds = "_seconds" in exprs or "age_seconds" in exprs
        counts = "normgate_batch_size" in exprs or "queue_depth" in exprs
        assert not (seconds and counts), panel["title"]
        if seconds:
            assert panel["fieldConfig"]["defaults"]["unit"] == "s" or "quantile" not in exprs, panel["title"]


def test_every_dashboard_expression_parses_with_promtool(tmp_path: Path):
    queries = dashboard_queries()
    assert len(queries) >= 15
    result = promtool_check_exprs([to_promql(e) for _, e in queries], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_the_promtool_check_rejects_a_broken_expression(tmp_path: Path):
    # The check above must be able to fail: an unbalanced parenthesis is refused by the same route.
    result = promtool_check_exprs(["sum(rate(normgate_batch_size_count[1m])"], tmp_path)
    assert result.returncode != 0


def test_metric_name_extraction_on_known_expressions():
    assert metric_names('histogram_quantile(0.99, sum by (le, endpoint) (rate(a_bucket{x="y"}[5m])))') == {"a_bucket"}
    assert metric_names("sum(rate(a_sum[1m])) / sum(rate(b_count[1m])) * 1024") == {"a_sum", "b_count"}
    assert metric_names('DCGM_FI_DEV_FB_USED{gpu="0"} and on (gpu) up') == {"DCGM_FI_DEV_FB_USED", "up"}


def test_dashboard_names_only_known_metrics():
    used = set()
    for where, expr in dashboard_queries():
        names = metric_names(to_promql(expr))
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            known = family_of(name) in SERVICE_METRICS or name in RECORDED or name in KUBE_STATE_METRICS
            assert known or name.startswith("DCGM_FI_"), f"{where}: unknown metric {name}"
        used |= names
    assert used >= DCGM_REQUIRED
    assert {family_of(n) for n in used if n.startswith("normgate_")} >= set(CORE_METRICS), (
        "every core metric appears on the dashboard"
    )


def test_dashboard_metrics_exist_on_the_live_service(live_app):
    text = live_app.metrics_text()
    families = metric_families(text)
    exposed_series = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", text, flags=re.MULTILINE))
    for where, expr in dashboard_queries():
        for name in metric_names(to_promql(expr)):
            if name.startswith("DCGM_FI_") or name in RECORDED or name in KUBE_STATE_METRICS:
                continue
            assert family_of(name) in families, f"{where}: {name} is not on the live /metrics"
            if family_of(name) != name or families[name] == "counter":
                assert name in exposed_series, f"{where}: no {name} series on the live /metrics"


def test_datasource_and_dashboard_provisioning_match_the_compose_mounts():
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = datasource["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    ds_variable = next(v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource")
    assert ds_variable["current"]["value"] == ds["uid"]
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]

    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "normgate.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == dashboards_path
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        f"{dashboards_path}/{DASHBOARD_PATH.name}"
    )
