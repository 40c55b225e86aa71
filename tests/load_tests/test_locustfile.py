"""Smoke test of the Locust scenarios: the locustfile and the burst shape import under Locust's gevent patching,
and every request the users send is answered by a real app (tiny checkpoint) with the status it expects.

Locust monkey-patches the standard library when imported, so it is imported in a child process, which writes
the requests it would send; this process replays them against the app.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import make_checkpoint, settings_for, wait_ready_sync

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import base64, json, random, sys
sys.path.insert(0, "load_tests")
import locustfile, burst
from locust import FastHttpUser, LoadTestShape

out = {"requests": []}
p = locustfile.payloads((96, 80), (64, 72), 1)
seen = set()
rng = random.Random(0)
for _ in range(400):  # the mix reaches every kind
    payload = locustfile.choose(rng)
    seen.add(payload.name)
for kind, items in sorted(p.items()):
    for payload in items:
        kw = locustfile.request_kwargs(payload)
        out["requests"].append({"name": kw["name"], "params": kw.get("params", {}), "headers": kw["headers"],
                                "data": base64.b64encode(kw["data"]).decode(), "expect": payload.expect})
out["chosen"] = sorted(seen)
out["user_is_fast_http"] = issubclass(locustfile.ModalityUser, FastHttpUser)
out["shape"] = issubclass(burst.MorningBurst, LoadTestShape)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def generated() -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_scenarios_import_and_cover_every_kind(generated):
    assert generated["user_is_fast_http"] and generated["shape"]
    names = {r["name"] for r in generated["requests"]}
    assert {"/assess [dicom]", "/assess [png multipart]", "/assess [jpeg]", "/assess [dicom, heatmap=none]"} <= names
    assert sum(1 for r in generated["requests"] if r["expect"] != 200) == 4
    assert set(generated["chosen"]) == names  # the traffic mix sends every one of them


def test_burst_shape_rises_holds_and_returns():
    # burst_stages is plain arithmetic, but its module imports Locust: ask a child process.
    ends = [0.20, 0.25, 0.70, 1.00]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, 'load_tests'); import json, burst; "
            "print(json.dumps(burst.burst_stages(100, 2, 12)))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    stages = json.loads(done.stdout.strip().splitlines()[-1])
    assert [round(s[0], 6) for s in stages] == [100 * e for e in ends]
    assert [s[1] for s in stages] == [2, 12, 12, 2]


def test_every_request_gets_its_expected_status(generated, tmp_path):
    models = tmp_path / "models"
    make_checkpoint(models / "default", seed=0)
    app_settings = settings_for(models)
    from service.app import create_app

    with TestClient(create_app(app_settings)) as client:
        wait_ready_sync(client)
        for request in generated["requests"]:
            response = client.post(
                "/assess",
                params=request["params"],
                headers=request["headers"],
                content=base64.b64decode(request["data"]),
            )
            assert response.status_code == request["expect"], (request["name"], response.text[:300])
            if request["expect"] == 200:
                body = response.json()
                assert body["decision"] in ("accept", "reacquire")
                assert (body["heatmap"] is None) == (request["params"].get("heatmap") == "none")
            else:
                assert "error" in response.json()
