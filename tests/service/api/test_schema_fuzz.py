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

import time

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

from service.app import create_app
from tests.helpers import settings_for

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
