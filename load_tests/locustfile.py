"""Locust scenarios for NormGate's POST /assess (issue 8).

Traffic as a radiology department makes it:

* ``ModalityUser`` — one X-ray room: it sends a study, then waits (``NORMGATE_LOAD_THINK_S``, default 1–3 s)
  before the next. Most studies are 16-bit DICOM straight from the detector (default 2500 × 3000, the size of
  a real chest detector, uncompressed: ~15 MB), some are PNG/JPEG exports from older rooms or the viewer
  (multipart, like a browser upload), a few ask for ``heatmap=none``, and about 1 in 40 requests is a bad
  input (truncated DICOM, text/plain, empty body, unknown method) that must be answered with its JSON
  4xx error (docs/api.md, "Errors") — a 4xx is a *success* for those and a failure for the others.
* ``MorningBurst`` (``load_tests/burst.py``) — the 8 o'clock rush: a few rooms, then all of them at once,
  then back; a ``LoadTestShape``, so it lives in its own file and this one can run with plain ``-u/-r``.

Every response's status code is counted per request name and written as JSON when Locust stops
(``NORMGATE_LOAD_STATUS_OUT``), so the runner (``load_tests/run_load.py``) can report errors by status.
This file must not import torch: Locust monkey-patches the standard library with gevent first.

    .venv/bin/locust -f load_tests/locustfile.py --headless -u 4 -r 2 -t 30s --host http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cache

from locust import FastHttpUser, between, events, task

try:  # run by Locust: this folder is on sys.path
    from images import dicom_bytes, jpeg_bytes, png_bytes, radiograph
except ImportError:  # imported as load_tests.locustfile
    from load_tests.images import dicom_bytes, jpeg_bytes, png_bytes, radiograph

ASSESS = "/assess"
DEFAULT_METHOD = "normgrad-conv1x1-combined"


@dataclass(frozen=True)
class Payload:
    """One request body: what to send and what a correct answer's status is."""

    name: str  # Locust request name (the statistics group)
    body: bytes
    content_type: str | None  # None: multipart/form-data with one field 'file'
    file_type: str = "application/octet-stream"  # the part's type in a multipart body
    params: tuple[tuple[str, str], ...] = ()
    expect: int = 200


def _size(env: str, default: str) -> tuple[int, int]:
    """``ROWSxCOLS`` from an environment variable."""
    rows, cols = (int(v) for v in os.environ.get(env, default).lower().split("x"))
    return rows, cols


@cache
def payloads(
    dicom_size: tuple[int, int] | None = None, png_size: tuple[int, int] | None = None, variants: int | None = None
) -> dict[str, list[Payload]]:
    """Every body the users send, built once per process (a few distinct images of each kind)."""
    dicom_size = dicom_size or _size("NORMGATE_LOAD_DICOM_SIZE", "2500x3000")
    png_size = png_size or _size("NORMGATE_LOAD_PNG_SIZE", "2048x2048")
    variants = variants or int(os.environ.get("NORMGATE_LOAD_VARIANTS", "3"))
    out: dict[str, list[Payload]] = defaultdict(list)
    for seed in range(variants):
        dcm = dicom_bytes(radiograph(*dicom_size, seed=seed), seed)
        out["dicom"].append(Payload("/assess [dicom]", dcm, "application/dicom"))
        out["dicom_no_heatmap"].append(
            Payload("/assess [dicom, heatmap=none]", dcm, "application/dicom", params=(("heatmap", "none"),))
        )
        png16 = png_bytes(radiograph(*png_size, seed=100 + seed))
        out["png"].append(Payload("/assess [png multipart]", png16, None, file_type="image/png"))
        out["jpeg"].append(Payload("/assess [jpeg]", jpeg_bytes(radiograph(*png_size, seed=200 + seed)), "image/jpeg"))
    dcm = out["dicom"][0].body
    out["bad"] = [
        Payload("/assess [bad: truncated dicom]", dcm[: len(dcm) // 3], "application/dicom", expect=400),
        Payload("/assess [bad: text/plain]", b"this is not an image", "text/plain", expect=415),
        Payload("/assess [bad: empty body]", b"", "image/png", expect=400),
        Payload(
            "/assess [bad: unknown method]",
            out["png"][0].body,
            "image/png",
            params=(("method", "no-such-method"),),
            expect=422,
        ),
    ]
    return dict(out)


def request_kwargs(payload: Payload) -> dict:
    """Keyword arguments for ``client.post(ASSESS, **kwargs)`` (FastHttpUser or any requests-like client)."""
    kwargs: dict = {"name": payload.name}
    if payload.params:
        kwargs["params"] = dict(payload.params)
    if payload.content_type is None:
        boundary = "normgate-load-" + format(abs(hash(payload.body[:64])), "x")
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image"\r\n'
            f"Content-Type: {payload.file_type}\r\n\r\n"
        ).encode()
        kwargs["data"] = head + payload.body + f"\r\n--{boundary}--\r\n".encode()
        kwargs["headers"] = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    else:
        kwargs["data"] = payload.body
        kwargs["headers"] = {"Content-Type": payload.content_type}
    return kwargs


# Share of each kind in a modality's traffic (weights; must sum to 1 with the bad share).
MIX = (("dicom", 0.70), ("dicom_no_heatmap", 0.05), ("png", 0.15), ("jpeg", 0.075), ("bad", 0.025))


def choose(rng: random.Random, mix=MIX) -> Payload:
    kinds = payloads()
    kind = rng.choices([k for k, _ in mix], weights=[w for _, w in mix])[0]
    return rng.choice(kinds[kind])


def post(client, payload: Payload) -> None:
    """POST one payload and judge it: the expected status is a success, anything else a failure."""
    with client.post(ASSESS, catch_response=True, **request_kwargs(payload)) as response:
        if response.status_code == payload.expect:
            if payload.expect == 200 and '"decision"' not in (response.text or ""):
                response.failure("200 without a decision")
            else:
                response.success()
        else:
            response.failure(f"HTTP {response.status_code}, expected {payload.expect}")


# -- status counting, written when Locust stops ----------------------------------------------------------------
STATUS_COUNTS: dict[str, Counter] = defaultdict(Counter)
SAMPLES: dict[str, list] = defaultdict(list)  # name -> [[status, response ms], ...] (runs are bounded)
_STATUS_LOCK = threading.Lock()


@events.request.add_listener
def _count_status(request_type, name, response_time, response_length, response=None, exception=None, **_):
    status = getattr(response, "status_code", None)
    key = str(status) if status else f"no response ({type(exception).__name__ if exception else 'unknown'})"
    with _STATUS_LOCK:
        STATUS_COUNTS[name][key] += 1
        SAMPLES[name].append([key, round(float(response_time), 2)])


def status_report() -> dict:
    with _STATUS_LOCK:
        return {
            "counts": {name: dict(c) for name, c in STATUS_COUNTS.items()},
            "samples": {name: list(v) for name, v in SAMPLES.items()},
        }


@events.quitting.add_listener
def _write_statuses(environment, **_):
    path = os.environ.get("NORMGATE_LOAD_STATUS_OUT")
    if path:
        with open(path, "w") as fh:
            json.dump(status_report(), fh)


@events.init.add_listener
def _build_payloads(environment, **_):
    payloads()  # pay for building the images before the clock starts, not in the first user's request


class ModalityUser(FastHttpUser):
    """One X-ray room: a study, then a pause; mixed DICOM/PNG/JPEG and occasional bad inputs."""

    _think = tuple(float(v) for v in os.environ.get("NORMGATE_LOAD_THINK_S", "1,3").split(","))
    wait_time = between(*_think) if len(_think) == 2 else between(_think[0], _think[0])
    network_timeout = 120.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def study(self) -> None:
        post(self.client, choose(self.rng))
