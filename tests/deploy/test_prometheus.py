"""deploy/prometheus checked with Prometheus' own tools: promtool (config, rules, rule unit tests, metrics lint)
and a real Prometheus server that scrapes a live NormGate on loopback and answers PromQL."""

from __future__ import annotations

import math
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.conftest import (
    CORE_METRICS,
    DEPLOY,
    free_loopback_port,
    metric_families,
    require_binary,
    run_tool,
    stop_process,
    wait_for_http,
)

PROM_DIR = DEPLOY / "prometheus"
RULE_FILES = [PROM_DIR / "recording_rules.yml", PROM_DIR / "alert_rules.yml"]
UNIT_TESTS = sorted((PROM_DIR / "tests").glob("*_test.yml"))
REQUIRED_ALERTS = {
    "NormGateHighP99Latency",
    "NormGateHigh503Rate",
    "NormGateNotReady",
    "NormGateQueueDepthHigh",
    "NormGateQueueSaturated",
    "NormGateDown",
    "NormGatePushBacklogOld",
    "NormGateResultsLost",
    "NormGateWorkerRestarts",
    "NormGateOutOfMemory",
    "NormGateContainerRestarts",
    "NormGateContainerOOMKilled",
    "NormGateAuthFailures",
    "NormGateUnassessableSpike",
    "NormGateReacquireRateDrift",
}
OPERATIONS = (DEPLOY.parent / "docs" / "operations.md").read_text()


def _rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_config():
    promtool = require_binary("promtool")
    result = run_tool([promtool, "check", "config", str(PROM_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_promtool_check_rules():
    promtool = require_binary("promtool")
    result = run_tool([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_cover_the_quantiles_the_brief_asks_for():
    records = {r["record"]: r["expr"] for r in _rules(PROM_DIR / "recording_rules.yml")}
    for metric, by in (("normgate_request_duration_seconds", "endpoint"), ("normgate_queue_wait_seconds", "model")):
        for q, name in (("0.50", "p50"), ("0.95", "p95"), ("0.99", "p99")):
            record = f"{by}:{metric}:{name}_5m"
            assert record in records, f"missing recording rule {record}"
            assert f"histogram_quantile({q}," in records[record]
            assert f"{metric}_bucket" in records[record]


def test_every_alert_has_unit_tests_that_fire_and_that_stay_silent():
    alerts = {r["alert"] for r in _rules(PROM_DIR / "alert_rules.yml") if "alert" in r}
    assert alerts >= REQUIRED_ALERTS
    fires, silent = set(), set()
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert alerts <= fires, f"alerts never expected to fire in a unit test: {alerts - fires}"
    assert alerts <= silent, f"alerts never expected to stay silent in a unit test: {alerts - silent}"


def test_no_rule_names_a_scrape_job():
    """The job label is the deployment's business (compose, a PodMonitor, annotation discovery): rules find
    NormGate targets by their own metrics instead."""
    for path in RULE_FILES:
        for rule in _rules(path):
            assert "job=" not in rule["expr"].replace(" ", ""), rule.get("alert") or rule.get("record")


def test_every_alert_has_a_severity_a_runbook_section_and_a_row_in_the_alert_table():
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.splitlines()
        if line.startswith("#")
    }
    for rule in _rules(PROM_DIR / "alert_rules.yml"):
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == name.lower() and anchor in headings, f"{name}: no section '### {name}' in docs/operations.md"
        assert re.search(rf"^\| \[`?{name}`?\]", OPERATIONS, flags=re.MULTILINE), f"{name}: not in the alert table"


@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(unit_test: Path):
    promtool = require_binary("promtool")
    result = run_tool([promtool, "test", "rules", str(unit_test)], cwd=unit_test.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_metrics_accepts_the_live_metrics(live_app):
    promtool = require_binary("promtool")
    text = live_app.metrics_text()
    families = metric_families(text)
    for name, kind in CORE_METRICS.items():
        assert families.get(name) == kind, f"{name}: expected a {kind}, /metrics says {families.get(name)}"
    result = run_tool([promtool, "check", "metrics"], input_text=text)
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"


def _query(base: str, promql: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5.0)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_the_app_and_evaluates_the_rules(live_app, tmp_path: Path):
    prometheus = require_binary("prometheus")
    app_target = live_app.base_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [{"job_name": "normgate", "static_configs": [{"targets": [app_target]}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_loopback_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        try:
            wait_for_http(f"{base}/-/ready", timeout_s=60, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}")

        # 1. The request histogram of the app arrives through a real scrape.
        deadline = time.monotonic() + 60
        samples: list[dict] = []
        while time.monotonic() < deadline and not samples:
            samples = _query(base, 'normgate_request_duration_seconds_count{job="normgate",endpoint="/assess"}')
            time.sleep(0.5)
        assert samples, f"no normgate_request_duration_seconds_count scraped\n{log_path.read_text()[-3000:]}"
        statuses = {s["metric"]["status"]: float(s["value"][1]) for s in samples}
        assert statuses.get("200", 0) >= 2 and statuses.get("400", 0) >= 1, statuses

        # 2. Traffic while Prometheus watches: the recorded p99 of /assess becomes a finite latency.
        for _ in range(3):
            assert live_app.assess(heatmap="none").status_code == 200
        deadline = time.monotonic() + 60
        p99 = float("nan")
        while time.monotonic() < deadline:
            result = _query(base, 'endpoint:normgate_request_duration_seconds:p99_5m{endpoint="/assess"}')
            if result and math.isfinite(p99 := float(result[0]["value"][1])):
                break
            time.sleep(0.5)
        assert math.isfinite(p99) and 0 < p99 <= 30, f"recorded p99 of /assess: {p99}"

        # 3. Every rule loaded and evaluates without error against real series; the service is up and ready,
        #    so NormGateNotReady and NormGateDown are not even pending.
        time.sleep(2)  # a couple more evaluation rounds of the alert group on the scraped data
        rules = httpx.get(f"{base}/api/v1/rules", timeout=5.0).json()["data"]["groups"]
        by_name = {r["name"]: r for g in rules for r in g["rules"]}
        assert set(by_name) >= REQUIRED_ALERTS
        unhealthy = [(name, r.get("lastError")) for name, r in by_name.items() if r["health"] != "ok"]
        assert not unhealthy, unhealthy
        for name in ("NormGateNotReady", "NormGateDown"):
            assert by_name[name]["state"] == "inactive", (name, by_name[name]["state"])
    finally:
        stop_process(proc)
