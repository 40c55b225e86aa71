"""``POST /evaluate`` refuses before any work starts (issue 17, item 4): every numeric field out of its bound, a
path of 10k characters, a body that is not ``application/json``, a data set whose rows leave
``NORMGATE_DATA_DIR`` (absolute, ``..``, a symbolic link out; the error names the CSV file and line), a full job
queue; every error carries the request id, and no answer names a folder of the server. Each case is a row of
docs/fault-table.md.

The app is the real one (service.app.create_app) with its job runner stopped once the app is ready, so accepted
jobs stay queued and no evaluation process starts; jobs that finished are written into the store directly.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from service.api.routes.evaluate import EvaluateRequest
from service.app import create_app
from service.evaluation import limits
from tests.helpers import png_bytes, radiograph, running_app, settings_for
from tests.service.fault_table import outcome

pytestmark = pytest.mark.timeout(180)

AREA = "evaluation requests"


@pytest.fixture
def folders(tmp_path_factory):
    """NORMGATE_DATA_DIR with one good data set whose other splits each break the confinement in one row."""
    base = tmp_path_factory.mktemp("evaluate-routes")
    data_dir, outside = base / "data", base / "outside"
    root = data_dir / "set"
    for folder in (root / "test", root / "link", outside):
        folder.mkdir(parents=True)
    image = png_bytes(radiograph(32, 32, seed=1))
    for i in range(3):
        (root / "test" / f"t{i}.png").write_bytes(image)
    (outside / "secret.png").write_bytes(image)
    (root / "link" / "ok.png").write_bytes(image)
    os.symlink(outside / "secret.png", root / "link" / "out.png")
    os.symlink(outside, data_dir / "escape")
    header = "image_name,annotation\n"
    (root / "test.csv").write_text(header + "t0.png,0 1 1 5 5\nt1.png,\nt2.png,\n")
    (root / "abs.csv").write_text(header + f"{root / 'test' / 't0.png'},\n")
    (root / "dotdot.csv").write_text(header + "test/t0.png,\n../../outside/secret.png,\n")
    (root / "link.csv").write_text(header + "ok.png,\nout.png,0 1 1 5 5\n")
    (root / "long.csv").write_text(header + "test/t0.png,\n" + "a" * 10_000 + ".png,\n")
    # Pretext backbone folders (init pretrained-backbone): one inside, one whose pretext.json links out.
    for folder in (data_dir / "pretexts" / "r18", data_dir / "pretexts" / "linked"):
        folder.mkdir(parents=True)
    (data_dir / "pretexts" / "r18" / "pretext.json").write_text('{"arch": "resnet18"}')
    (outside / "pretext.json").write_text('{"arch": "resnet18"}')
    os.symlink(outside / "pretext.json", data_dir / "pretexts" / "linked" / "pretext.json")
    return base, data_dir


def run(coroutine):
    return asyncio.run(coroutine)


async def _started(app):
    """The app running with its job runner stopped (jobs stay queued; nothing is evaluated)."""
    context = running_app(app)
    client = await context.__aenter__()
    app.state.evaluation_runner.stop()
    return context, client


def _assert_no_server_path(text: str, *folders) -> None:
    for folder in folders:
        for form in {str(folder), os.path.realpath(folder)}:
            assert form not in text, f"{form} in {text[:500]}"


GOOD = {"data": "set", "split": "test", "model": "default", "methods": "normgrad-conv1x1-combined"}

# field → (the largest value accepted, the first one refused), and the smallest accepted/refused.
EDGES = {
    "repeat": ((limits.MAX_REPEAT, limits.MAX_REPEAT + 1), (1, 0)),
    "batch_size": ((limits.MAX_BATCH_SIZE, limits.MAX_BATCH_SIZE + 1), (1, 0)),
    "smooth_sigma": ((limits.MAX_SMOOTH_SIGMA, limits.MAX_SMOOTH_SIGMA + 0.5), (0.0, -0.1)),
    "tau": ((limits.MAX_TAU, limits.MAX_TAU + 0.5), (0.0, -1.0)),
    "tau_rel": ((limits.MAX_TAU_REL, limits.MAX_TAU_REL + 0.5), (1e-6, 0.0)),  # above 0: 0 itself is refused
    "seed": ((limits.MAX_SEED, limits.MAX_SEED + 1), (0, -1)),
}


def _not_null(prop: dict) -> dict:
    """The schema of an optional field's value (``anyOf: [value, null]``), or the field's own."""
    return next((branch for branch in prop.get("anyOf", []) if branch.get("type") != "null"), prop)


def test_the_request_schema_carries_the_cli_bounds():
    """One definition: the OpenAPI schema the fuzzing generates from has the limits of the CLI."""
    schema = EvaluateRequest.model_json_schema()["properties"]
    assert schema["repeat"]["maximum"] == limits.MAX_REPEAT and schema["repeat"]["minimum"] == 1
    assert schema["batch_size"]["maximum"] == limits.MAX_BATCH_SIZE
    assert _not_null(schema["tau"])["maximum"] == limits.MAX_TAU and _not_null(schema["tau"])["minimum"] == 0
    assert schema["smooth_sigma"]["maximum"] == limits.MAX_SMOOTH_SIGMA
    tau_rel = _not_null(schema["tau_rel"])
    assert tau_rel["maximum"] == limits.MAX_TAU_REL and tau_rel["exclusiveMinimum"] == 0
    assert schema["seed"]["maximum"] == limits.MAX_SEED and schema["seed"]["minimum"] == 0
    assert schema["data"]["maxLength"] == limits.MAX_PATH_CHARS
    pretext = [branch for branch in schema["pretext"]["anyOf"] if branch.get("type") != "null"]
    assert {b.get("maxLength") for b in pretext if b["type"] == "string"} == {limits.MAX_PATH_CHARS}
    assert {b.get("maxItems") for b in pretext if b["type"] == "array"} == {limits.MAX_PRETEXTS}
    for name in ("split", "init", "combine", "postprocess", "path_baseline"):
        assert schema[name]["maxLength"] == limits.MAX_NAME_CHARS, name


def test_bounds_content_type_paths_and_queue(models_dir, folders, fault_row, monkeypatch):
    base, data_dir = folders
    app = create_app(settings_for(models_dir, data_dir=data_dir, evaluate_max_queued=1000))

    async def scenario():
        context, client = await _started(app)
        answers = {}
        try:

            async def post(body=None, content=None, headers=None):
                content = json.dumps(body).encode() if content is None else content
                headers = {"content-type": "application/json"} if headers is None else headers
                return await client.post("/evaluate", content=content, headers=headers)

            for field, ((high_ok, high_bad), (low_ok, low_bad)) in EDGES.items():
                extra = {"init": "full-random"} if field == "repeat" else {}
                for value in (high_ok, low_ok, high_bad, low_bad):
                    answers[(field, value)] = await post({**GOOD, **extra, field: value})
            answers["repeat 1000000"] = await post({**GOOD, "init": "full-random", "repeat": 1_000_000})
            answers["checkpoints × repeat"] = await post(
                {**GOOD, "init": "full-random", "repeat": limits.MAX_REPEAT, "model": ["default", "wide"]}
            )
            answers["NaN tau"] = await post(content=b'{"data": "set", "tau": NaN}')
            answers["shard 0/1000000"] = await post({**GOOD, "shard": "0/1000000"})
            answers["10k data path"] = await post({**GOOD, "data": "d" * 10_000})
            answers["10k model"] = await post({**GOOD, "model": "m" * 10_000})
            answers["deep JSON"] = await post(content=b"[" * 30_000 + b"]" * 30_000)
            monkeypatch.setattr(limits, "MAX_IMAGES", 2)
            answers["image count over the bound"] = await post(GOOD)
            monkeypatch.undo()
            answers["text/plain body"] = await post(
                content=json.dumps(GOOD).encode(), headers={"content-type": "text/plain"}
            )
            answers["form post"] = await post(
                content=b"data=set", headers={"content-type": "application/x-www-form-urlencoded"}
            )
            answers["no content type"] = await post(content=json.dumps(GOOD).encode(), headers={})
            for split in ("abs", "dotdot", "link", "long"):
                answers[split] = await post({**GOOD, "split": split})
            answers["data through a link out"] = await post({**GOOD, "data": "escape"})
            with_pretext = {**GOOD, "init": "pretrained-backbone"}
            answers["pretext inside"] = await post({**with_pretext, "pretext": "pretexts/r18"})
            answers["pretext up"] = await post({**with_pretext, "pretext": "../outside"})
            answers["pretext through a link out"] = await post({**with_pretext, "pretext": "escape"})
            answers["pretext.json a link out"] = await post({**with_pretext, "pretext": "pretexts/linked"})
            answers["10k pretext"] = await post({**with_pretext, "pretext": "p" * 10_000})
            answers["pretexts over the bound"] = await post(
                {**with_pretext, "pretext": ["pretexts/r18"] * (limits.MAX_PRETEXTS + 1)}
            )
            answers["pretext without its init"] = await post({**GOOD, "pretext": "pretexts/r18"})
            answers["init without its pretext"] = await post(with_pretext)
            answers["both tolerances"] = await post({**GOOD, "tau": 3.0, "tau_rel": 0.05})
            answers["unknown postprocess"] = await post({**GOOD, "postprocess": "cv2"})
            answers["unknown path baseline"] = await post({**GOOD, "path_baseline": "white"})
            answers["long postprocess"] = await post({**GOOD, "postprocess": "s" * 10_000})
            runner = app.state.evaluation_runner
            runner.max_queued = runner.store.list().__len__() + 1
            answers["last queue place"] = await post(GOOD)
            answers["queue full"] = await post(GOOD)
            answers["unknown job"] = await client.get("/evaluate/" + "f" * 10_000)
        finally:
            await context.__aexit__(None, None, None)
        return answers

    answers = run(scenario())
    for field, ((high_ok, high_bad), (low_ok, low_bad)) in EDGES.items():
        observed = {value: outcome(answers[(field, value)]) for value in (high_ok, low_ok, high_bad, low_bad)}
        expected = {high_ok: "202", low_ok: "202", high_bad: "422 bad_parameter", low_bad: "422 bad_parameter"}
        assert observed == expected, (field, {v: answers[(field, v)].text[:200] for v in observed})
        assert field in answers[(field, high_bad)].json()["detail"]
        fault_row(
            AREA,
            f"{field}: {low_ok} and {high_ok} accepted, {low_bad} and {high_bad} refused",
            "202 202 422 bad_parameter 422 bad_parameter",
            " ".join(observed[v] for v in (low_ok, high_ok, low_bad, high_bad)),
        )
    refused = {
        "repeat 1000000": ("the issue's `init: full-random, repeat: 1000000`", "422 bad_parameter", "repeat"),
        "checkpoints × repeat": (f"2 checkpoints × repeat {limits.MAX_REPEAT}", "422 bad_parameter", "memory"),
        "NaN tau": ("`tau: NaN`", "422 bad_parameter", "tau"),
        "shard 0/1000000": ("`shard: 0/1000000`", "422 bad_parameter", "shard"),
        "10k data path": ("a 10 000-character `data` path", "422 bad_parameter", "data"),
        "10k model": ("a 10 000-character `model`", "422 bad_parameter", "model"),
        "deep JSON": ("30 000 nested JSON arrays", "422 bad_parameter", "JSON"),
        "image count over the bound": ("a split of 3 images with the image bound set to 2", "422 bad_parameter", "3"),
        "text/plain body": ("a JSON body sent as text/plain (a cross-site form)", "415 unsupported_media_type", ""),
        "form post": ("an application/x-www-form-urlencoded form post", "415 unsupported_media_type", ""),
        "no content type": ("a JSON body without a content type", "415 unsupported_media_type", ""),
        "abs": ("a CSV row with an absolute image path", "422 bad_parameter", "abs.csv line 2"),
        "dotdot": ("a CSV row going up with ../..", "422 bad_parameter", "dotdot.csv line 3"),
        "link": ("a CSV row that is a symbolic link out of the data folder", "422 bad_parameter", "link.csv line 3"),
        "long": ("a CSV row with a 10 000-character image path", "422 bad_parameter", "long.csv line 3"),
        "data through a link out": ("`data` a symbolic link out of the data folder", "422 bad_parameter", "outside"),
        "pretext up": ("`pretext` going up out of the data folder", "422 bad_parameter", "outside"),
        "pretext through a link out": (
            "`pretext` a symbolic link out of the data folder",
            "422 bad_parameter",
            "outside",
        ),
        "pretext.json a link out": (
            "a `pretext` folder whose pretext.json links out",
            "422 bad_parameter",
            "symbolic link",
        ),
        "10k pretext": ("a 10 000-character `pretext`", "422 bad_parameter", "pretext"),
        "pretexts over the bound": (
            f"{limits.MAX_PRETEXTS + 1} `pretext` folders",
            "422 bad_parameter",
            "pretext",
        ),
        "pretext without its init": ("`pretext` without `init: pretrained-backbone`", "422 bad_parameter", "pretext"),
        "init without its pretext": ("`init: pretrained-backbone` without `pretext`", "422 bad_parameter", "pretext"),
        "both tolerances": ("both `tau` and `tau_rel`", "422 bad_parameter", "tau-rel"),
        "unknown postprocess": ("`postprocess: cv2`", "422 bad_parameter", "postprocess"),
        "unknown path baseline": ("`path_baseline: white`", "422 bad_parameter", "path-baseline"),
        "long postprocess": ("a 10 000-character `postprocess`", "422 bad_parameter", "postprocess"),
        "queue full": ("one job more than NORMGATE_EVALUATE_MAX_QUEUED", "503 overloaded", "limit"),
        "unknown job": ("GET of an unknown 10 000-character job id", "404 not_found", "no evaluation job"),
    }
    for key, (case, expected, named) in refused.items():
        response = answers[key]
        body = response.json()
        assert outcome(response) == expected, (key, response.text[:300])
        assert named in body["detail"], (key, body["detail"])
        assert body.get("request_id") and response.headers["x-request-id"] == body["request_id"], key
        _assert_no_server_path(response.text, base)
        fault_row(AREA, case, f"{expected}, request_id", f"{outcome(response)}, request_id")
    assert answers["queue full"].headers["retry-after"] == "60"
    assert outcome(answers["pretext inside"]) == "202", answers["pretext inside"].text[:300]
    assert outcome(answers["last queue place"]) == "202"


def test_answers_name_no_server_folder(models_dir, folders, fault_row, tmp_path):
    """A finished job's status and report, and a failed job's error, with the server's folders in what was
    stored: the answers give them relative to NORMGATE_DATA_DIR / NORMGATE_MODELS_DIR."""
    base, data_dir = folders
    app = create_app(settings_for(models_dir, data_dir=data_dir))

    async def scenario():
        context, client = await _started(app)
        try:
            accepted = await client.post("/evaluate", json=GOOD)
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            runner = app.state.evaluation_runner
            job = runner.store.get(job_id)
            out_dir = data_dir / "evaluate" / "jobs" / job_id
            out_dir.mkdir(parents=True)
            model = job.params["models"][0]
            (out_dir / "results.json").write_text(
                json.dumps({"methods": {}, "counts": {"images": 3}, "models": {"default": {"source": model}}})
            )
            (out_dir / "report.html").write_text(f"<p>data <code>{job.params['data']}</code> model {model}</p>")
            runner.store.finish(job_id, "done")
            done = await client.get(f"/evaluate/{job_id}")
            report = await client.get(f"/evaluate/{job_id}/report")

            failed_id = (await client.post("/evaluate", json=GOOD)).json()["job_id"]
            runner.store.finish(
                failed_id,
                "failed",
                f"DatasetError: {job.params['data']}/test/t1.png: cannot decode; see {out_dir}/job.log "
                "and /usr/lib/python3/site-packages/torch/nn/modules/conv.py",
            )
            failed = await client.get(f"/evaluate/{failed_id}")
            cancelled = await client.delete(f"/evaluate/{failed_id}")
        finally:
            await context.__aexit__(None, None, None)
        return done, report, failed, cancelled

    done, report, failed, cancelled = run(scenario())
    assert done.status_code == 200 and report.status_code == 200
    for response in (done, report, failed, cancelled):
        _assert_no_server_path(response.text, base, models_dir, "/usr/lib")
    status = done.json()
    assert status["params"]["data"] == "set" and status["params"]["models"] == ["default"]
    assert "confine_to" not in status["params"] and "out" not in status["params"]
    assert status["results"]["models"]["default"]["source"] == "default"
    assert "<code>set</code> model default" in report.text
    error = failed.json()["error"]
    assert error.startswith("DatasetError: set/test/t1.png: cannot decode; see evaluate/jobs/") and "…/conv.py" in error
    assert outcome(cancelled) == "409 already_finished" and cancelled.json()["request_id"]
    fault_row(
        AREA,
        "job status, results, report and error of jobs whose stored paths are absolute",
        "no server-absolute path in any answer",
        "no server-absolute path in any answer",
    )  # reached only when the assertions above held
