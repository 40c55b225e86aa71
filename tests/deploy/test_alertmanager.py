"""deploy/alertmanager: the configuration Alertmanager itself accepts (``amtool check-config``, Debian
``prometheus-alertmanager``), routing by severity checked with ``amtool config routes test``, and inhibition rules
that name alerts which exist."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, require_binary, run_tool

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
ALERTS = [
    rule
    for group in yaml.safe_load((DEPLOY / "prometheus" / "alert_rules.yml").read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
]


def test_amtool_check_config():
    amtool = require_binary("amtool")
    result = run_tool([amtool, "check-config", str(CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "2 receivers" in result.stdout


def test_amtool_check_config_can_fail(tmp_path):
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: normgate-oncall", "receiver: nobody"))
    result = run_tool([require_binary("amtool"), "check-config", str(broken)])
    assert result.returncode != 0


@pytest.mark.parametrize(
    "labels, receiver",
    [
        (["severity=critical", "alertname=NormGateDown"], "normgate-oncall"),
        (["severity=warning", "alertname=NormGatePushBacklogOld"], "normgate-team"),
        (["alertname=SomethingElse"], "normgate-team"),
    ],
)
def test_routing_by_severity(labels, receiver):
    result = run_tool([require_binary("amtool"), "config", "routes", "test", f"--config.file={CONFIG}", *labels])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


def test_every_alert_severity_has_a_route_and_inhibitions_name_real_alerts():
    config = yaml.safe_load(CONFIG.read_text())
    routed = {m.split("=")[1].strip().strip('"') for r in config["route"]["routes"] for m in r["matchers"]}
    assert {rule["labels"]["severity"] for rule in ALERTS} <= routed
    names = {rule["alert"] for rule in ALERTS}
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            if matcher.startswith("alertname"):
                pattern = matcher.split("=", 1)[1].strip().lstrip("~").strip().strip('"')
                assert any(re.fullmatch(pattern, name) for name in names), matcher
