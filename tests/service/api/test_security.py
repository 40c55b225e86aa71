"""Who gets in and how much they may send: API keys, public endpoints, body/multipart limits, slow bodies,
and the evaluation jobs' data roots (issue 6). Every case lands in docs/fault-table.md (``fault_row``).

Decoder limits (pixel count, DICOM element lengths, decompression bombs) are tried file by file in
tests/models/imaging/test_decode.py's committed corpus; ``test_ingest_corpus_over_http`` sends that same corpus through /assess.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.dicomweb.multipart import build_multipart_related
from service.keys import DEFAULT_SCOPES, hash_key, identify
from tests.helpers import REPO, dicom_bytes, png_bytes, radiograph, running_app, settings_for, wait_ready_sync
from tests.models.imaging.data.make_ingest_corpus import CORPUS_DIR
from tests.service.dicom_factory import chest_like, dx_instance
from tests.service.fault_table import outcome

pytestmark = [pytest.mark.timeout(180), pytest.mark.filterwarnings("ignore::UserWarning")]

KEY_ONE, KEY_TWO = "k-one-7f3a9c", "k-two-51bd02"
SMALL_PNG = png_bytes(radiograph(40, 50))
SMALL_DICOM = dicom_bytes(radiograph(40, 50))
STOW_INSTANCE = dx_instance(chest_like(48, 40))
MAX_BODY_MB = 0.05  # 52 428 bytes


def assert_json_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.text


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def locked(models_dir):
    """Keys configured: one stored as its digest, one plain; every optional endpoint closed."""
    settings = settings_for(
        models_dir, api_keys=[hash_key(KEY_ONE), KEY_TWO], public_endpoints=[], max_body_mb=MAX_BODY_MB
    )
    app = create_app(settings)
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz", headers=bearer(KEY_ONE)).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def _stow(body: bytes, copies: int = 1) -> tuple[bytes, dict[str, str]]:
    payload, content_type = build_multipart_related([body] * copies, "sec-boundary")
    return payload, {"content-type": content_type}


# Every endpoint that must refuse a caller without the key, with the request it takes.
PROTECTED = {
    "POST /assess": ("POST", "/assess", SMALL_PNG, {"content-type": "image/png"}),
    "POST /render": ("POST", "/render", SMALL_PNG, {"content-type": "image/png"}),
    "POST /dicomweb/studies": ("POST", "/dicomweb/studies", *_stow(STOW_INSTANCE)),
    "GET /dicomweb/…/instances/{uid}": ("GET", "/dicomweb/studies/1.2/series/1.3/instances/1.4", None, {}),
    "POST /evaluate": ("POST", "/evaluate", b'{"data": "x"}', {"content-type": "application/json"}),
    "GET /evaluate/{id}": ("GET", "/evaluate/0123", None, {}),
    "GET /evaluate/{id}/report": ("GET", "/evaluate/0123/report", None, {}),
    "DELETE /evaluate/{id}": ("DELETE", "/evaluate/0123", None, {}),
    "GET /healthz (not public)": ("GET", "/healthz", None, {}),
    "GET /readyz (not public)": ("GET", "/readyz", None, {}),
    "GET /metrics (not public)": ("GET", "/metrics", None, {}),
    "GET /models (not public)": ("GET", "/models", None, {}),
    "GET /methods (not public)": ("GET", "/methods", None, {}),
}
# What each answers with a valid key (the evaluation job ids do not exist; a 404 proves the key was taken).
WITH_KEY = {
    "POST /assess": 200,
    "POST /render": 200,
    "POST /dicomweb/studies": 200,
    "GET /dicomweb/…/instances/{uid}": 404,
    "POST /evaluate": 422,
    "GET /evaluate/{id}": 404,
    "GET /evaluate/{id}/report": 404,
    "DELETE /evaluate/{id}": 404,
}


@pytest.mark.parametrize("name", list(PROTECTED))
def test_every_protected_endpoint_needs_a_valid_key(locked, name, fault_row):
    method, path, body, headers = PROTECTED[name]
    attempts = {
        "no Authorization header": {},
        "unknown key": bearer("k-three"),
        "Basic scheme": {"authorization": "Basic azEtb25lOg=="},
        "the digest itself as the key": bearer(hash_key(KEY_ONE)),
        "a valid key with a trailing byte": bearer(KEY_ONE + "x"),
    }
    for what, auth in attempts.items():
        response = locked.request(method, path, content=body, headers={**headers, **auth})
        fault_row("authentication", f"{name}: {what}", "401 unauthorized", outcome(response))
        assert_json_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    for key in (KEY_ONE, KEY_TWO):  # the digest entry and the plain (hashed at load) entry both work
        response = locked.request(method, path, content=body, headers={**headers, **bearer(key)})
        assert response.status_code == WITH_KEY.get(name, 200), response.text


def test_viewer_page_and_schema_stay_open(locked):
    assert locked.get("/").status_code == 200
    assert locked.get("/viewer/viewer.js").status_code == 200
    assert locked.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("public", [["healthz", "readyz", "metrics", "models"], ["healthz"], []])
def test_public_endpoints_are_configurable(models_dir, public):
    app = create_app(settings_for(models_dir, api_keys=[KEY_ONE], public_endpoints=public))
    with TestClient(app) as client:
        wait_ready_sync(client) if "readyz" in public else None
        paths = {
            "healthz": ["/healthz"],
            "readyz": ["/readyz"],
            "metrics": ["/metrics"],
            "models": ["/models", "/methods"],
        }
        for name, urls in paths.items():
            for url in urls:
                response = client.get(url)
                if name in public:
                    assert response.status_code in (200, 503), (url, response.text)  # readyz may still be 503
                else:
                    assert_json_error(response, 401, "unauthorized")
                    assert client.get(url, headers=bearer(KEY_ONE)).status_code in (200, 503)
        assert_json_error(
            client.post("/assess", content=SMALL_PNG, headers={"content-type": "image/png"}), 401, "unauthorized"
        )  # never public


def test_no_keys_configured_means_open(models_dir):
    app = create_app(settings_for(models_dir, api_keys=[]))
    with TestClient(app) as client:
        wait_ready_sync(client)
        assert client.post("/assess", content=SMALL_PNG, headers={"content-type": "image/png"}).status_code == 200


def test_keys_are_hashed_at_rest_and_plain_ones_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="normgate.keys"):
        settings = Settings(api_keys=f"{KEY_TWO}, {hash_key(KEY_ONE).upper().replace('SHA256', 'sha256')}")
    two, one = hashlib.sha256(KEY_TWO.encode()).hexdigest(), hashlib.sha256(KEY_ONE.encode()).hexdigest()
    # Entries from before key ids are named by position, and kept in full form so the names stay.
    assert settings.api_keys == [f"key-1:sha256:{two}:assess+evaluate", f"key-2:sha256:{one}:assess+evaluate"]
    assert KEY_TWO not in repr(settings) and KEY_TWO not in settings.model_dump_json()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all(KEY_TWO not in w for w in warnings)
    assert "2 NORMGATE_API_KEYS entries have no id" in warnings[0] and "key-1, key-2" in warnings[0]
    assert "1 plain API key" in warnings[1]
    with pytest.raises(ValueError, match="64 hex digits") as bad:
        Settings(api_keys="sha256:abc123")
    assert "abc123" not in str(bad.value)  # a mistyped entry is never echoed into logs
    with pytest.raises(ValueError, match="unknown endpoint"):
        Settings(public_endpoints="healthz,assess")


def test_key_entries_carry_ids_and_scopes():
    digest = hashlib.sha256(KEY_ONE.encode()).hexdigest()
    settings = Settings(
        api_keys=f"pacs-router:sha256:{digest}, auditor:{KEY_TWO}:audit, both:k-three:assess+evaluate+audit"
    )
    table = {key.key_id: key for key in settings.api_key_table}
    assert list(table) == ["pacs-router", "auditor", "both"]
    assert table["pacs-router"].scopes == DEFAULT_SCOPES == {"assess", "evaluate"}
    assert table["auditor"].scopes == {"audit"} and table["both"].scopes == {"assess", "evaluate", "audit"}
    assert table["pacs-router"].digest == bytes.fromhex(digest)
    assert table["auditor"].digest == hashlib.sha256(KEY_TWO.encode()).digest()
    assert settings.api_keys[1] == f"auditor:sha256:{hashlib.sha256(KEY_TWO.encode()).hexdigest()}:audit"
    assert Settings(api_keys=settings.api_keys).api_key_table == settings.api_key_table  # stable when re-read
    for entry, message in [
        ("a:sha256:" + digest + ":assess+delete", "unknown API key scope"),
        (f"a:sha256:{digest}, a:{KEY_TWO}", "must be unique; repeated: a"),
        (f"bad id!:{KEY_TWO}", "is not valid"),
        ("a:", "has an id but no key"),
    ]:
        with pytest.raises(ValueError, match=message):
            Settings(api_keys=entry)


def test_key_identification_is_over_digests_of_every_key():
    table = Settings(api_keys=[f"one:{KEY_ONE}", f"two:{KEY_TWO}"]).api_key_table
    assert all(len(key.digest) == 32 for key in table)
    assert identify(KEY_ONE, table).key_id == "one" and identify(KEY_TWO, table).key_id == "two"
    assert identify("", table) is None and identify(KEY_ONE[:-1], table) is None
    assert identify(KEY_ONE, []) is None


def test_keys_cli_prints_the_entry_and_makes_new_keys():
    root = REPO

    def run(*args, stdin=None):
        return subprocess.run(
            [sys.executable, "-m", "service.keys", *args],
            cwd=root,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    assert run("hash", KEY_ONE).strip() == hash_key(KEY_ONE)
    assert run("hash", stdin=KEY_ONE + "\n").strip() == hash_key(KEY_ONE)
    assert run("hash", KEY_ONE, "--id", "ward-3").strip() == f"ward-3:{hash_key(KEY_ONE)}"
    assert (
        run("hash", KEY_ONE, "--id", "qa", "--scopes", "audit+assess").strip() == f"qa:{hash_key(KEY_ONE)}:assess+audit"
    )
    made = dict(line.split(": ", 1) for line in run("new", "--id", "ris").splitlines())
    key = made["key"].strip()
    assert len(key) >= 40 and made["entry"].strip() == f"ris:{hash_key(key)}"
    assert Settings(api_keys=made["entry"]).api_key_table[0].key_id == "ris"
    refused = subprocess.run(
        [sys.executable, "-m", "service.keys", "hash", KEY_ONE, "--id", "x", "--scopes", "delete"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "unknown API key scope" in refused.stderr


# Keys with scopes, one per kind of caller.
SCOPED_KEYS = {"reader": "k-reader-1", "evaluator": "k-eval-2", "auditor": "k-audit-3", "legacy": "k-legacy-4"}


@pytest.fixture(scope="module")
def scoped(models_dir, tmp_path_factory):
    entries = [
        f"reader:{hash_key(SCOPED_KEYS['reader'])}:assess",
        f"evaluator:{hash_key(SCOPED_KEYS['evaluator'])}:evaluate",
        f"auditor:{hash_key(SCOPED_KEYS['auditor'])}:audit",
        f"legacy:{hash_key(SCOPED_KEYS['legacy'])}",  # no scopes: assess+evaluate
    ]
    app = create_app(settings_for(models_dir, api_keys=entries, data_dir=tmp_path_factory.mktemp("scoped-data")))
    records = []
    app.state.assessor.decision_listeners.append(records.append)
    with TestClient(app) as client:
        wait_ready_sync(client)
        yield client, records


# endpoint → (request, the scope it needs, what it answers once admitted)
SCOPED_ENDPOINTS = {
    "POST /assess": (("POST", "/assess", SMALL_PNG, {"content-type": "image/png"}), "assess", 200),
    "POST /render": (("POST", "/render", SMALL_PNG, {"content-type": "image/png"}), "assess", 200),
    "POST /dicomweb/studies": (("POST", "/dicomweb/studies", *_stow(STOW_INSTANCE)), "assess", 200),
    "GET /dicomweb/…/instances/{uid}": (
        ("GET", "/dicomweb/studies/1.2/series/1.3/instances/1.4", None, {}),
        "assess",
        404,
    ),
    "POST /evaluate": (("POST", "/evaluate", b'{"data": "x"}', {"content-type": "application/json"}), "evaluate", 422),
    "GET /evaluate/{id}": (("GET", "/evaluate/0123", None, {}), "evaluate", 404),
    "GET /audit": (("GET", "/audit", None, {}), "audit", 200),
    "GET /audit/{id}": (("GET", "/audit/0123", None, {}), "audit", 404),
    "POST /assessments/{id}/verdict": (
        ("POST", "/assessments/0123/verdict", b'{"verdict": "agree"}', {"content-type": "application/json"}),
        "assess",
        404,
    ),
}
SCOPES_OF = {"reader": {"assess"}, "evaluator": {"evaluate"}, "auditor": {"audit"}, "legacy": {"assess", "evaluate"}}


@pytest.mark.parametrize("name", list(SCOPED_ENDPOINTS))
def test_each_endpoint_needs_its_scope(scoped, name, fault_row):
    client, _ = scoped
    (method, path, body, headers), scope, admitted = SCOPED_ENDPOINTS[name]
    for key_id, key in SCOPED_KEYS.items():
        response = client.request(method, path, content=body, headers={**headers, **bearer(key)})
        if scope in SCOPES_OF[key_id]:
            assert response.status_code == admitted, (key_id, response.text)
        else:
            fault_row(
                "authorisation", f"{name} with a key without '{scope}' ({key_id})", "403 forbidden", outcome(response)
            )
            assert_json_error(response, 403, "forbidden")
            assert repr(key_id) in response.json()["detail"] and key not in response.text


def test_the_key_id_never_the_key_goes_with_every_decision(scoped, caplog):
    client, records = scoped
    with caplog.at_level(logging.INFO, logger="normgate.decisions"):
        answer = client.post(
            "/assess", content=SMALL_PNG, headers={"content-type": "image/png", **bearer(SCOPED_KEYS["reader"])}
        )
    assert answer.status_code == 200
    record = next(r for r in records if r.assessment_id == answer.json()["assessment_id"])
    assert record.key_id == "reader"
    logged = [r.getMessage() for r in caplog.records if answer.json()["assessment_id"] in r.getMessage()]
    assert len(logged) == 1 and "key reader" in logged[0]
    assert all(key not in logged[0] for key in SCOPED_KEYS.values())
    stowed = client.post(
        "/dicomweb/studies",
        content=_stow(STOW_INSTANCE)[0],
        headers={**_stow(STOW_INSTANCE)[1], **bearer(SCOPED_KEYS["legacy"])},
    )
    assert stowed.status_code == 200
    assert records[-1].source == "stow" and records[-1].key_id == "legacy"


def test_require_scope_guards_any_route(models_dir):
    """The dependency factory other routes use (the audit trail's GET /audit needs "audit")."""
    from fastapi import Depends, FastAPI

    from service.api.deps import Caller, require_scope
    from service.api.errors import install_error_handlers

    app = FastAPI()
    app.state.settings = settings_for(models_dir, api_keys=[f"auditor:{KEY_ONE}:audit", f"clerk:{KEY_TWO}"])
    install_error_handlers(app)

    @app.get("/audit-like")
    def audited(caller: Caller = Depends(require_scope("audit"))) -> dict[str, str | None]:
        return {"key_id": caller.key_id}

    with TestClient(app) as client:
        assert client.get("/audit-like", headers=bearer(KEY_ONE)).json() == {"key_id": "auditor"}
        assert_json_error(client.get("/audit-like", headers=bearer(KEY_TWO)), 403, "forbidden")
        assert_json_error(client.get("/audit-like"), 401, "unauthorized")
    app.state.settings = settings_for(models_dir, api_keys=[])
    with TestClient(app) as client:  # authentication off: open, no key id
        assert client.get("/audit-like").json() == {"key_id": None}
    with pytest.raises(ValueError, match="unknown scope"):
        require_scope("delete")


def test_no_keys_is_loud_and_visible_on_metrics(models_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="normgate.app"):
        open_app = create_app(settings_for(models_dir, api_keys=[]))
        with TestClient(open_app) as client:
            wait_ready_sync(client)
            open_metrics = client.get("/metrics").text
    assert any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)
    assert "normgate_auth_enabled 0.0" in open_metrics
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="normgate.app"):
        locked_app = create_app(settings_for(models_dir, api_keys=[f"ops:{KEY_ONE}"]))
        with TestClient(locked_app) as client:
            locked_metrics = client.get("/metrics").text
    assert not any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)
    assert "normgate_auth_enabled 1.0" in locked_metrics


# -- limits -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(models_dir):
    app = create_app(settings_for(models_dir, max_body_mb=MAX_BODY_MB, dicomweb_max_instances=2))
    with TestClient(app) as client:
        wait_ready_sync(client)
        yield client


def _multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, dict]:
    chunks = []
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


OVER = b"\0" * int(MAX_BODY_MB * 1024 * 1024 + 1)


def _chunks(data: bytes, size: int = 8192):
    for i in range(0, len(data), size):
        yield data[i : i + size]


LIMIT_CASES = {
    "/assess body over NORMGATE_MAX_BODY_MB (Content-Length)": (
        ("POST", "/assess"),
        {"content": OVER, "headers": {"content-type": "image/png"}},
        "413 too_large",
    ),
    "/assess chunked body over the limit (no Content-Length)": (
        ("POST", "/assess"),
        {"content": _chunks(OVER), "headers": {"content-type": "image/png"}},
        "413 too_large",
    ),
    "/assess Content-Length not a number": (
        ("POST", "/assess"),
        {"content": SMALL_PNG, "headers": {"content-type": "image/png", "content-length": "12abc"}},
        "400 bad_image",
    ),
    "/render body over the limit": (
        ("POST", "/render"),
        {"content": OVER, "headers": {"content-type": "image/png"}},
        "413 too_large",
    ),
    "/dicomweb/studies body over the limit": (
        ("POST", "/dicomweb/studies"),
        dict(zip(("content", "headers"), _stow(OVER))),
        "413 too_large",
    ),
    "/dicomweb/studies more parts than NORMGATE_DICOMWEB_MAX_INSTANCES": (
        ("POST", "/dicomweb/studies"),
        dict(zip(("content", "headers"), _stow(SMALL_DICOM, copies=3))),
        "413 too_large",
    ),
    "/evaluate JSON body over 64 KiB": (
        ("POST", "/evaluate"),
        {"content": b'{"data": "' + b"a" * 70_000 + b'"}', "headers": {"content-type": "application/json"}},
        "413 too_large",
    ),
    "/assess multipart with two file fields": (
        ("POST", "/assess"),
        dict(zip(("content", "headers"), _multipart([("file", "a.png", SMALL_PNG), ("file", "b.png", SMALL_PNG)]))),
        "400 bad_image",
    ),
    "/assess multipart with 40 form fields": (
        ("POST", "/assess"),
        dict(
            zip(
                ("content", "headers"),
                _multipart([("file", "a.png", SMALL_PNG)] + [(f"f{i}", None, b"x") for i in range(40)]),
            )
        ),
        "400 bad_image",
    ),
    "/assess multipart without a closing boundary": (
        ("POST", "/assess"),
        {"content": _multipart([("file", "a.png", SMALL_PNG)])[0][:-12], "headers": _multipart([])[1]},
        "400 bad_image",
    ),
    "/assess multipart field named other than file": (
        ("POST", "/assess"),
        dict(zip(("content", "headers"), _multipart([("image", "a.png", SMALL_PNG)]))),
        "400 bad_image",
    ),
}


@pytest.mark.parametrize("case", list(LIMIT_CASES))
def test_request_limits_answer_json_errors(limited, case, fault_row):
    (method, path), kwargs, expected = LIMIT_CASES[case]
    response = limited.request(method, path, **kwargs)
    fault_row("limits", case, expected, outcome(response))
    status, code = expected.split(" ", 1)
    assert_json_error(response, int(status), code)


def test_one_file_multipart_within_the_limits_is_assessed(limited):
    body, headers = _multipart([("file", "a.png", SMALL_PNG), ("note", None, b"hello")])
    assert limited.post("/assess", content=body, headers=headers).status_code == 200


# -- slow bodies --------------------------------------------------------------------------------------------


async def _trickle(
    app, path: str, headers: list[tuple[bytes, bytes]], every_s: float, give_up_s: float
) -> tuple[list[dict], float]:
    """Send one byte every ``every_s`` seconds, forever; return the answer and how long it took."""
    answered = asyncio.Event()
    messages: list[dict] = []

    async def receive():
        if answered.is_set():
            return {"type": "http.disconnect"}
        await asyncio.sleep(every_s)
        return {"type": "http.request", "body": b"\x89", "more_body": True}

    async def send(message):
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5001),
        "server": ("normgate", 80),
        "headers": headers,
    }
    started = time.monotonic()
    await asyncio.wait_for(app(scope, receive, send), give_up_s)
    return messages, time.monotonic() - started


@pytest.mark.parametrize(
    "path,content_type",
    [
        ("/assess", b"image/png"),
        ("/render", b"image/png"),
        ("/dicomweb/studies", b'multipart/related; type="application/dicom"; boundary=x'),
        ("/evaluate", b"application/json"),
    ],
)
def test_a_trickled_body_gets_408_after_the_body_read_timeout(models_dir, path, content_type, fault_row):
    async def scenario():
        app = create_app(settings_for(models_dir, body_read_timeout_s=0.6))
        async with running_app(app):
            return await _trickle(
                app, path, [(b"content-type", content_type), (b"content-length", b"10000")], every_s=0.1, give_up_s=20
            )

    messages, took = asyncio.run(scenario())
    start = messages[0]
    body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
    fault_row(
        "limits",
        f"{path}: body trickled 1 byte / 100 ms, NORMGATE_BODY_READ_TIMEOUT_S=0.6",
        "408 request_timeout",
        f"{start['status']} {body['error']}",
    )
    assert start["status"] == 408 and body["error"] == "request_timeout"
    assert (b"connection", b"close") in start["headers"]
    assert 0.6 <= took < 5


# -- evaluation jobs stay inside their roots ---------------------------------------------------------------


def _dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "test.csv").write_text("image_name,annotation\n", encoding="utf-8")
    return folder


def test_evaluation_paths_never_leave_the_data_and_models_roots(tmp_path, models_dir, fault_row):
    from service.api.routes.evaluate import _PathRejected, resolve_data_path, resolve_model_path

    data_root = tmp_path / "data"
    _dataset(data_root / "inside")
    outside = _dataset(tmp_path / "outside" / "secret")
    (data_root / "link_out").symlink_to(outside, target_is_directory=True)
    (data_root / "inside" / "up").symlink_to(tmp_path / "outside", target_is_directory=True)
    (data_root / "model_link").symlink_to(models_dir / "default", target_is_directory=True)
    stray_model = tmp_path / "outside" / "model"
    stray_model.mkdir()
    (stray_model / "model.json").write_text((models_dir / "default" / "model.json").read_text())

    roots = [data_root]
    assert resolve_data_path("inside", roots) == (data_root / "inside").resolve()  # the positive control
    assert resolve_model_path("default", models_dir, roots) == (models_dir / "default").resolve()

    settings = settings_for(models_dir, data_dir=data_root)
    app = create_app(settings)
    bad_requests = {
        "data '..' out of the data folder": {"data": "../outside/secret"},
        "data absolute path elsewhere": {"data": str(outside)},
        "data symlink pointing out of the data folder": {"data": "link_out"},
        "data through a symlinked subfolder pointing out": {"data": "inside/up/secret"},
        "data with a NUL byte": {"data": "inside\x00/etc"},
        "data empty": {"data": ""},
        "model '..' to a checkpoint outside the roots": {"data": "inside", "model": "../outside/model"},
        "model absolute path outside the roots": {"data": "inside", "model": str(stray_model)},
        "split with path separators": {"data": "inside", "split": "../../outside/secret/test"},
    }
    with TestClient(app) as client:
        for case, request in bad_requests.items():
            response = client.post("/evaluate", json=request)
            fault_row("evaluation paths", case, "422 bad_parameter", outcome(response))
            assert_json_error(response, 422, "bad_parameter")
    with pytest.raises(_PathRejected):
        resolve_data_path("link_out", roots)
    # A symlink inside the data folder to a checkpoint is judged by where it leads (the models folder).
    assert resolve_model_path("model_link", models_dir, [data_root, models_dir]) == (models_dir / "default").resolve()


# -- the committed ingestion corpus, through HTTP ------------------------------------------------------------

_STATUS = {"bad_image": 400, "too_large": 413, "unsupported_media_type": 415, "bad_parameter": 422}
MIB = 1024 * 1024
# The manifest gives the single-image decoder's outcome, which refuses a multi-frame object; /assess decodes one
# frame by frame (docs/api.md, "Multi-frame images and series") and answers 200 with a result per frame: (width, height, frames).
ASSESSED_AS_FRAMES = {"multi_frame.dcm": (64, 48, 2)}


def test_ingest_corpus_over_http(models_dir, fault_row):
    """Every file of tests/models/imaging/data/ingest_corpus through POST /assess: the decoder's outcome (checked
    file by file in tests/models/imaging/test_decode.py) becomes its status (docs/api.md, "Errors"), and nothing is a 5xx."""
    manifest = json.loads((CORPUS_DIR / "manifest.json").read_text())
    by_limits: dict[str, list[dict]] = {}
    for entry in manifest:
        by_limits.setdefault(json.dumps(entry.get("limits", {}), sort_keys=True), []).append(entry)
    for limits_json, entries in by_limits.items():
        limits = json.loads(limits_json)
        overrides = {}
        if "max_body_bytes" in limits:
            overrides["max_body_mb"] = limits["max_body_bytes"] / MIB
        if "max_dicom_element_bytes" in limits:
            overrides["max_dicom_element_mb"] = limits["max_dicom_element_bytes"] / MIB
        if "max_pixels" in limits:
            overrides["max_pixels"] = limits["max_pixels"]
        app = create_app(settings_for(models_dir, **overrides))
        with TestClient(app) as client:
            wait_ready_sync(client)
            for entry in entries:
                headers = {"content-type": entry["content_type"]} if entry["content_type"] else {}
                response = client.post(
                    "/assess",
                    params={"heatmap": "none"},
                    content=(CORPUS_DIR / entry["file"]).read_bytes(),
                    headers=headers,
                )
                expected_error = entry["expected"].get("error")
                expected = f"{_STATUS[expected_error]} {expected_error}" if expected_error else "200"
                frames = ASSESSED_AS_FRAMES.get(entry["file"])
                if frames is not None:
                    expected = "200"
                fault_row("ingestion corpus", f"{entry['file']}: {entry['why']}", expected, outcome(response))
                assert outcome(response) == expected, (entry["file"], response.text)
                if frames is not None:
                    body = response.json()
                    assert (body["image"]["width"], body["image"]["height"], len(body["frames"])) == frames, body
                elif expected == "200":
                    size = response.json()["image"]
                    assert (size["width"], size["height"]) == (
                        entry["expected"]["ok"]["width"],
                        entry["expected"]["ok"]["height"],
                    )
