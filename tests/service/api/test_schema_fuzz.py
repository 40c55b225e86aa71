"""Schemathesis against the app's own OpenAPI schema, in process (ASGI, lifespan started, models ready).

For every documented operation it generates requests from the schema, valid ones and (negative mode) ones
that break it, and checks: no 5xx other than 503/504 (overload and deadlines are answers, not failures); the
status is one the operation documents; the content type and the body match what is documented for that status.
The app runs with an API key (every request carries it: a key with every scope, so the key id and scope checks
run on every operation without hiding what lies behind them), a small decode budget and a short request
deadline, so the new refusals (403, 413 over the budget, 504 at the deadline) are part of what is documented. A few examples per operation keep it within seconds; the
image decoders themselves are fuzzed much harder in tests/models/imaging/test_decode.py (hypothesis mutations of every
supported kind, and the committed corpus).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.routes.evaluate import EvaluateRequest
from service.app import create_app
from service.evaluation import limits
from tests.helpers import png_bytes, radiograph, settings_for

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::UserWarning")]

FUZZ_KEY = "k-fuzz-all-scopes"


@schemathesis.check
def no_server_error_but_503_504(ctx, response, case):
    """schemathesis' not_a_server_error, except that 503 and 504 are documented answers."""
    if response.status_code >= 500 and response.status_code not in (503, 504):
        raise AssertionError(f"{case.operation.label} answered {response.status_code}: {response.text[:300]}")
    return None


CHECKS = [no_server_error_but_503_504, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 6

# STOW-RS bodies are multipart/related, which schemathesis does not build: the generated binary is sent as is
# (its refusals are checked here; the multipart parser is fuzzed by hypothesis in test_dicomweb.py).
schemathesis.serializer.alias("multipart/related", "application/octet-stream")


@pytest.fixture(scope="module")
def app(models_dir, tmp_path_factory):
    # An empty data folder: a generated /evaluate request can never name a real data set and start a job.
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    return create_app(
        settings_for(
            models_dir,
            data_dir=data_dir,
            max_body_mb=1,
            body_read_timeout_s=5,
            api_keys=[f"fuzz:{FUZZ_KEY}:assess+evaluate+audit"],
            max_decode_mb=16,
            request_timeout_ms=5000,
        )
    )


def test_every_operation_answers_as_documented(app, fault_row):
    """One test for all operations: schemathesis' pytest plugin ends the app's lifespan after each test, and
    loading the models again for every operation would cost more than the fuzzing. (Not its own
    ``from_fixture`` integration either: that reads a private attribute pytest 9 no longer has.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    with asgi.get_client(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz", headers={"authorization": f"Bearer {FUZZ_KEY}"}).status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)
    failures = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        seen: list[int] = []
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=cases)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            response = case.call(headers={"authorization": f"Bearer {FUZZ_KEY}"})
            seen.append(response.status_code)
            case.validate_response(response, checks=CHECKS)

        expected = "no 5xx but 503/504; status, content type, body as documented"
        try:
            run()
            observed = expected
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            failures[operation.label] = str(exc)[:2000]
            observed = f"statuses {sorted(set(seen))}: {str(exc).splitlines()[0][:120]}"
        fault_row(
            "schema fuzzing", f"{operation.label}: schemathesis, valid and schema-breaking requests", expected, observed
        )
    assert operations >= 10
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


# --- /evaluate bodies: the bounded fields, values at and past their bounds, paths out, content types -----------

# The bounds written out from service/evaluation/limits.py, independently of the request model under test.
NUMERIC_BOUNDS = {
    "repeat": (1, limits.MAX_REPEAT),
    "batch_size": (1, limits.MAX_BATCH_SIZE),
    "seed": (0, limits.MAX_SEED),
    "tau": (0.0, limits.MAX_TAU),
    "tau_rel": (0.0, limits.MAX_TAU_REL),
    "smooth_sigma": (0.0, limits.MAX_SMOOTH_SIGMA),
}
# Fields whose lower bound is itself refused: a relative tolerance is above 0.
OPEN_BELOW = {"tau_rel"}
# Fields that may be null (the model's own tolerance then applies); at most one of them may be given.
OPTIONAL_TOLERANCES = ("tau", "tau_rel")
EDGE_NUMBERS = sorted(
    {v for low, high in NUMERIC_BOUNDS.values() for v in (low - 1, low, high, high + 1)}
    | {2**70, -(2**70), 0.025, limits.MAX_TAU_REL / 2}
)
PATHS_OUT = ["../set", "/etc", "set/../..", "escape", "d" * 10_000, "set\x00x", "", "set/test/../../.."]
JSON_TYPES = ("application/json", "application/json; charset=utf-8")


def _out_of_bounds(body: object) -> list[str]:
    """The bounded fields of ``body`` holding a number (not a bool) outside its bound, NaN or ±inf included."""
    if not isinstance(body, dict):
        return []
    bad = []
    for field in NUMERIC_BOUNDS:
        value = body.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_bounds(field, value):
            bad.append(field)  # NaN compares false both ways, so it lands here too
    return bad


def _in_bounds(field: str, value: float) -> bool:
    low, high = NUMERIC_BOUNDS[field]
    above_low = low < value if field in OPEN_BELOW else low <= value
    return math.isfinite(value) and above_low and value <= high


def _both_tolerances(body: object) -> bool:
    """``tau`` and ``tau_rel`` both given (not null): one tolerance or the other, never both."""
    return isinstance(body, dict) and all(body.get(field) is not None for field in OPTIONAL_TOLERANCES)


def _stored_job_is_within_bounds(params: dict, data_dir, models_dir) -> list[str]:
    """What a job accepted with 202 must look like in the store: every number in bounds, every path inside."""
    problems = [
        f"{field}={params[field]!r}"
        for field in NUMERIC_BOUNDS
        if not (params[field] is None and field in OPTIONAL_TOLERANCES) and not _in_bounds(field, params[field])
    ]
    if _both_tolerances(params):
        problems.append(f"both tau={params['tau']!r} and tau_rel={params['tau_rel']!r}")
    if len(params["models"]) * params["repeat"] > limits.MAX_MODEL_INSTANCES:
        problems.append(f"{len(params['models'])} models × repeat {params['repeat']}")
    pretexts = params["pretext"] or []
    if len(pretexts) > limits.MAX_PRETEXTS or bool(pretexts) != (params["init"] == "pretrained-backbone"):
        problems.append(f"pretext {pretexts} with init {params['init']}")
    inside = [os.path.realpath(data_dir), os.path.realpath(models_dir)]
    for path in [params["data"], *params["models"], *pretexts]:
        if not any(Path(os.path.realpath(path)).is_relative_to(root) for root in inside):
            problems.append(f"{path} outside the data and models folders")
    return problems


def test_evaluate_bodies_with_the_bounded_fields(models_dir, tmp_path, fault_row):
    """Hypothesis bodies for POST /evaluate over every field: in-bound, edge and out-of-bound numbers (NaN and
    ±inf too), paths that leave the data folder, wrong types, unknown fields, and the content types a browser form
    can send. Every answer is 202, 415, 422 or 503 (the bounded queue fills up); a body that is not JSON is 415
    whatever it holds, a number out of its bound is 422, so is a body with both ``tau`` and ``tau_rel``, and a job
    that is accepted is stored with every number in bounds, one tolerance at most, and every path (data, models,
    pretext folders) inside the data and models folders. Every error carries its request id, no answer names a
    server folder, and nothing is evaluated (the runner is stopped)."""
    data_dir, outside = tmp_path / "data", tmp_path / "outside"
    (data_dir / "set" / "test").mkdir(parents=True)
    outside.mkdir()
    (data_dir / "set" / "test" / "a.png").write_bytes(png_bytes(radiograph(32, 32)))
    (data_dir / "set" / "test.csv").write_text("image_name,annotation\na.png,0 1 1 5 5\n")
    (data_dir / "escape").symlink_to(outside)
    (data_dir / "pretext-r18").mkdir()  # a pretext folder inside: jobs naming it with pretrained-backbone are valid
    (data_dir / "pretext-r18" / "pretext.json").write_text('{"arch": "resnet18"}')
    (outside / "pretext.json").write_text('{"arch": "resnet18"}')  # reachable only through "escape"
    max_queued = 4
    app = create_app(settings_for(models_dir, data_dir=data_dir, evaluate_max_queued=max_queued))

    numbers = st.one_of(
        st.sampled_from(EDGE_NUMBERS), st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**40), 2**40)
    )
    texts = st.one_of(
        st.sampled_from(["set", "test", "default", "wide", "full-random", "semi-random", "0/2", "1/1024"]),
        st.sampled_from(["pretrained-backbone", "random-head", "pretext-r18", "seed", "none", "zero", "black"]),
        st.sampled_from(PATHS_OUT),
        st.sampled_from(["normgrad-conv1x1-combined", "gradcam,random", "nope"]),
        st.text(max_size=20),
    )
    values = st.one_of(numbers, texts, st.none(), st.booleans(), st.lists(texts, max_size=3))
    fields = st.sampled_from([*EvaluateRequest.model_fields, "unknown_flag"])
    good = {"data": "set", "model": "default", "methods": "normgrad-conv1x1-combined"}
    bodies = st.one_of(
        st.just(good),
        st.builds(lambda field, value: {**good, field: value}, fields, values),
        st.builds(lambda field, value: {**good, field: value}, st.sampled_from(sorted(NUMERIC_BOUNDS)), numbers),
        st.dictionaries(fields, values, max_size=5).map(lambda extra: {"data": "set", **extra}),
        st.dictionaries(fields, values, max_size=3),
        values,
    )
    content_types = st.one_of(
        st.sampled_from(JSON_TYPES),
        st.sampled_from(
            ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", None]
        ),
    )
    seen: dict[int, int] = {}
    problems: list[str] = []
    server_paths = {str(p) for p in (tmp_path, models_dir)} | {os.path.realpath(p) for p in (tmp_path, models_dir)}
    with asgi.get_client(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)
        runner = app.state.evaluation_runner
        runner.stop()

        @given(body=bodies, content_type=content_types)
        @settings(
            max_examples=150,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(body, content_type):
            headers = {} if content_type is None else {"content-type": content_type}
            response = client.post("/evaluate", data=json.dumps(body).encode(), headers=headers)
            status = response.status_code
            seen[status] = seen.get(status, 0) + 1
            said = f"{status} for {str(body)[:120]} as {content_type}: {response.text[:160]}"
            if status not in (202, 415, 422, 503):
                problems.append(said)
            elif status >= 400 and not response.json().get("request_id"):
                problems.append(f"no request_id: {said}")
            if content_type not in JSON_TYPES and status != 415:
                problems.append(f"not 415: {said}")
            elif content_type in JSON_TYPES and _out_of_bounds(body) and status != 422:
                problems.append(f"{_out_of_bounds(body)} out of bounds, not 422: {said}")
            elif content_type in JSON_TYPES and _both_tolerances(body) and status != 422:
                problems.append(f"both tau and tau_rel, not 422: {said}")
            if status == 202:
                job = runner.store.get(response.json()["job_id"])
                problems.extend(f"{p}: {said}" for p in _stored_job_is_within_bounds(job.params, data_dir, models_dir))
            if any(path in response.text for path in server_paths):
                problems.append(f"a server path: {said}")

        run()
        jobs = runner.store.list(limit=1000)
    expected = (
        "415 for every non-JSON body, 422 for every number out of bounds and for both tolerances, 202 only in "
        "bounds; request_id"
    )
    observed = expected if not problems else "; ".join(problems[:3])
    fault_row(
        "schema fuzzing",
        "POST /evaluate: 150 hypothesis bodies over every field (edges, NaN, ±inf, paths out, wrong types) × "
        "content types (JSON, text/plain, form, multipart, none)",
        expected,
        observed,
    )
    assert not problems, problems[:10]
    # Valid jobs, form posts, bad fields and the full queue all came up; the queue held exactly its bound.
    assert {202, 415, 422, 503} <= set(seen), seen
    assert seen[202] == len(jobs) == max_queued, (seen, len(jobs))
    assert {job.status for job in jobs} == {"queued"}  # nothing was evaluated
