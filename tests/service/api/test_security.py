"""Who gets in and how much they may send: API keys, public endpoints, body/multipart limits, slow bodies,
and the evaluation jobs' data roots (issue 6). Every case lands in docs/fault-table.md (``fault_row``).

Decoder limits (pixel count, DICOM element lengths, decompression bombs) are tried file by file in
tests/models/imaging/test_decode.py's committed corpus; ``test_ingest_corpus_over_http`` sends that same corpus through /assess.
"""

from __future__ import annotations

import asyncio
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
from service.keys import hash_key, key_matches
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
    assert settings.api_keys == [hash_key(KEY_TWO), hash_key(KEY_ONE)]
    assert KEY_TWO not in repr(settings) and KEY_TWO not in settings.model_dump_json()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "plain API key" in warnings[0] and KEY_TWO not in warnings[0]
    with pytest.raises(ValueError, match="64 hex digits") as bad:
        Settings(api_keys="sha256:abc123")
    assert "abc123" not in str(bad.value)  # a mistyped entry is never echoed into logs
    with pytest.raises(ValueError, match="unknown endpoint"):
        Settings(public_endpoints="healthz,assess")


def test_key_comparison_is_over_digests_of_every_key():
    digests = Settings(api_keys=[KEY_ONE, KEY_TWO]).api_key_digests
    assert all(len(d) == 32 for d in digests)
    assert key_matches(KEY_ONE, digests) and key_matches(KEY_TWO, digests)
    assert not key_matches("", digests) and not key_matches(KEY_ONE[:-1], digests)
    assert not key_matches(KEY_ONE, [])


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
    made = dict(line.split(": ", 1) for line in run("new").splitlines())
    assert len(made["key"].strip()) >= 40 and made["entry"].strip() == hash_key(made["key"].strip())


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
                fault_row("ingestion corpus", f"{entry['file']}: {entry['why']}", expected, outcome(response))
                assert outcome(response) == expected, (entry["file"], response.text)
                if expected == "200":
                    size = response.json()["image"]
                    assert (size["width"], size["height"]) == (
                        entry["expected"]["ok"]["width"],
                        entry["expected"]["ok"]["height"],
                    )
