"""/metrics against its documentation, and the pre-initialised counters.

The families a fresh app exports are exactly the ones docs/api.md's metrics table lists and the README's /metrics
row names (a new metric needs both lines). Every labelled counter already has its known label sets at 0 before
any traffic: rate() and increase() only see an increment when a sample precedes it, so the first error of a kind
would otherwise be invisible to the alerts.
"""

from __future__ import annotations

import re
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.observability.metrics import PUSH_CHANNELS, PUSH_OUTCOMES, REJECTION_REASONS
from service.schemas import UnassessableReason
from tests.helpers import REPO, settings_for, wait_ready_sync


@pytest.fixture(scope="module")
def exposed(models_dir, tmp_path_factory) -> dict:
    settings = settings_for(models_dir, state_dir=tmp_path_factory.mktemp("state"))
    with TestClient(create_app(settings)) as client:
        wait_ready_sync(client)
        text = client.get("/metrics").text
    return {family.name: family for family in text_string_to_metric_families(text)}


def _exposed_names(exposed: dict) -> set[str]:
    # prometheus_client also exports each counter's and histogram's creation time as a *_created gauge
    return {
        name + ("_total" if family.type == "counter" else "")
        for name, family in exposed.items()
        if not name.endswith("_created")
    }


def test_docs_api_table_lists_exactly_the_exported_families(exposed):
    text = (REPO / "docs" / "api.md").read_text()
    section = text[text.index("## Health, readiness, metrics") :]
    section = section[: section.index("\n## ", 1)]
    documented = set(re.findall(r"^\| `(normgate_\w+)` \|", section, flags=re.MULTILINE))
    assert documented == _exposed_names(exposed), documented ^ _exposed_names(exposed)


def test_readme_metrics_row_names_exactly_the_exported_families(exposed):
    text = (REPO / "README.md").read_text()
    listed = text[text.index("<!-- metrics-list:start -->") : text.index("<!-- metrics-list:end -->")]
    assert set(re.findall(r"`(normgate_\w+)`", listed)) == _exposed_names(exposed)


def _samples(exposed: dict, family: str) -> dict[tuple, float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in exposed[family].samples
        if s.name.endswith("_total") or exposed[family].type == "gauge"
    }


def test_labelled_counters_start_at_zero_for_every_known_label_set(exposed):
    rejected = _samples(exposed, "normgate_rejected")
    warm_up_free = {(("reason", r),): 0.0 for r in REJECTION_REASONS}
    assert {k: rejected[k] for k in warm_up_free} == warm_up_free
    decisions = _samples(exposed, "normgate_decisions")
    expected = [("reacquire", "none"), ("accept", "none")] + [("unassessable", r) for r in get_args(UnassessableReason)]
    for decision, reason in expected:
        key = (("decision", decision), ("model", "default"), ("reason", reason))
        assert key in decisions, key  # (warm-up requests do not count as decisions)
    for family in ("normgate_worker_restarts", "normgate_out_of_memory"):
        models = _samples(exposed, family)
        assert (("model", "default"),) in models and set(models.values()) == {0.0}
    push = _samples(exposed, "normgate_dicomweb_push")
    assert push == {(("channel", c), ("outcome", o)): 0.0 for c in PUSH_CHANNELS for o in PUSH_OUTCOMES}
    for gauge in ("normgate_dicomweb_push_queue_depth", "normgate_dicomweb_push_oldest_age_seconds"):
        assert _samples(exposed, gauge) == {(("channel", c),): 0.0 for c in PUSH_CHANNELS}
