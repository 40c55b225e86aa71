"""A real server (uvicorn subprocess on loopback, tests/service/fault_server.py: the service's own uvicorn
options, a model slowed to a known capacity) under several times its capacity, a slow-body attack over a real
socket, and SIGTERM with requests still queued. Bounded in count and time; the server is killed in ``finally``.

"Answered exactly once" is checked from both ends: every client request gets one response with its own
``X-Request-ID``, the server's per-status request counters equal the client's counts, and the images the model
computed (batch-size histogram, warm-up excluded) are exactly the 200s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO as ROOT
from tests.helpers import TEST_MIN_IMAGE_SIDE, png_bytes, radiograph
from tests.service.fault_table import outcome

pytestmark = pytest.mark.timeout(240)

WARM_UP_IMAGES = 2  # ModelWorker._warm_up: one heatmap request and one forward-only request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(models_dir: Path, log_path: Path, batch_seconds: float, **settings):
    port = free_port()
    env = dict(
        os.environ,
        NORMGATE_HOST="127.0.0.1",
        NORMGATE_PORT=str(port),
        NORMGATE_MODELS_DIR=str(models_dir),
        NORMGATE_DEVICE="cpu",
        NORMGATE_TORCH_THREADS="1",
        NORMGATE_API_KEYS="",
        NORMGATE_TEST_BATCH_SECONDS=str(batch_seconds),
        NORMGATE_MIN_IMAGE_SIDE=str(TEST_MIN_IMAGE_SIDE),
        PYTHONUNBUFFERED="1",
    )
    env.update({f"NORMGATE_{k.upper()}": str(v) for k, v in settings.items()})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.service.fault_server"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "server not ready: " + log_path.read_text()[-3000:]
            time.sleep(0.2)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def body_of(seed: int) -> bytes:
    return png_bytes(radiograph(48 + seed % 7, 64 + seed % 5, seed=seed))


def counter(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    assert wanted or total >= 0
    return total


def test_several_times_capacity_gives_only_200_503_504_each_answered_once(models_dir, tmp_path, fault_row):
    batch_seconds = 0.2
    max_batch = 2
    capacity_per_s = max_batch / batch_seconds  # 10 images/s
    rate_per_s, duration_s = 4.5 * capacity_per_s, 2.0
    total = int(rate_per_s * duration_s)

    async def load(base: str):
        async with httpx.AsyncClient(
            base_url=base, timeout=60, limits=httpx.Limits(max_connections=total + 5)
        ) as client:

            async def one(i: int):
                await asyncio.sleep(i / rate_per_s)
                return await client.post("/assess", content=body_of(i), headers={"content-type": "image/png"})

            responses = await asyncio.gather(*(one(i) for i in range(total)))
            metrics = (await client.get("/metrics")).text
            return responses, metrics

    with server(
        models_dir,
        tmp_path / "server.log",
        batch_seconds,
        max_batch_size=max_batch,
        max_batch_wait_ms=5,
        max_queue_size=4,
        request_timeout_ms=1500,
        decode_workers=1,
    ) as (_, base):
        responses, metrics = asyncio.run(load(base))

    statuses = collections.Counter(r.status_code for r in responses)
    ids = [r.headers["x-request-id"] for r in responses]
    observed = ", ".join(f"{s}×{n}" for s, n in sorted(statuses.items()))
    only_allowed = set(statuses) <= {200, 503, 504}
    fault_row(
        "overload",
        f"{total} requests at {rate_per_s / capacity_per_s:g}× capacity (real server)",
        "only 200/503/504, each answered once",
        "only 200/503/504, each answered once" if only_allowed and len(set(ids)) == total else observed,
    )
    assert only_allowed, observed
    assert statuses[200] >= capacity_per_s * duration_s * 0.25, observed  # it kept serving, not only refusing
    assert statuses[503] > 0, observed  # it was really overloaded
    assert len(set(ids)) == total  # one response per request, each with its own id
    for response in responses:
        if response.status_code == 200:
            assert response.json()["request_id"] == response.headers["x-request-id"]
        else:
            assert response.json()["error"] in ("overloaded", "timeout")
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
    for status, count in statuses.items():  # the server answered each exactly once, too
        assert (
            counter(metrics, "normgate_request_duration_seconds_count", endpoint="/assess", status=str(status)) == count
        )
    computed = counter(metrics, "normgate_batch_size_sum", model="default") - WARM_UP_IMAGES
    assert computed == statuses[200]  # every computed image answered, no image computed for a refusal
    assert counter(metrics, "normgate_decisions_total", model="default") == statuses[200]


def test_a_slow_body_over_a_real_socket_gets_408_and_the_connection_closed(models_dir, tmp_path, fault_row):
    with server(models_dir, tmp_path / "server.log", 0.0, body_read_timeout_s=1.0) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /assess HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
            started = time.monotonic()
            received = b""
            sock.settimeout(0.2)
            while time.monotonic() - started < 10:
                with contextlib.suppress(OSError):
                    sock.sendall(b"\x89")  # one byte every 200 ms
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break  # the server closed the connection
                received += chunk
            took = time.monotonic() - started
    head = received.split(b"\r\n", 1)[0].decode(errors="replace")
    fault_row(
        "limits",
        "body trickled 1 byte / 200 ms over a real socket, timeout 1 s",
        "408 request_timeout, connection closed",
        f"{head.split(' ', 2)[1] if ' ' in head else head} "
        f"{'request_timeout' if b'request_timeout' in received else '?'}, connection "
        f"{'closed' if took < 10 else 'left open'}",
    )
    assert head.startswith("HTTP/1.1 408"), received
    assert b'"error":"request_timeout"' in received
    assert 1.0 <= took < 8


@pytest.mark.parametrize("grace_s,expect_all", [(15.0, True), (0.6, False)], ids=["long-grace", "short-grace"])
def test_sigterm_stops_accepting_and_drains_within_the_grace(models_dir, tmp_path, grace_s, expect_all, fault_row):
    batch_seconds, queued = 0.4, 6

    async def scenario(process, base):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:

            async def one(i):
                try:
                    return await client.post("/assess", content=body_of(i), headers={"content-type": "image/png"})
                except httpx.HTTPError as exc:
                    return exc

            pending = [asyncio.ensure_future(one(i)) for i in range(queued)]
            await asyncio.sleep(0.8)  # all sent and decoded; the slow model has started the first
            terminated_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            try:
                async with httpx.AsyncClient(base_url=base, timeout=5) as fresh:
                    late = await fresh.post("/assess", content=body_of(99), headers={"content-type": "image/png"})
            except httpx.HTTPError as exc:
                late = exc
            results = await asyncio.gather(*pending)
            exit_code = await asyncio.to_thread(process.wait, 60)
            return results, late, exit_code, time.monotonic() - terminated_at

    with server(
        models_dir,
        tmp_path / "server.log",
        batch_seconds,
        max_batch_size=1,
        max_batch_wait_ms=0,
        max_queue_size=16,
        request_timeout_ms=30_000,
        shutdown_grace_s=grace_s,
    ) as (process, base):
        results, late, exit_code, took = asyncio.run(scenario(process, base))

    answered = [r for r in results if isinstance(r, httpx.Response)]
    late_outcome = outcome(late) if isinstance(late, httpx.Response) else "connection refused"
    fault_row(
        "shutdown",
        f"new request after SIGTERM (grace {grace_s:g} s)",
        "refused (503 or connection refused)",
        "refused (503 or connection refused)"
        if late_outcome in ("connection refused", "503 not_ready", "503 overloaded")
        else late_outcome,
    )
    assert late_outcome in ("connection refused", "503 not_ready", "503 overloaded"), late
    # 503 not_ready: cancelled when the grace ran out (never a plain-text 500).
    assert all(outcome(r) in ("200", "503 not_ready") for r in answered), [outcome(r) for r in answered]
    completed = [r for r in answered if r.status_code == 200]
    # uvicorn re-raises SIGTERM once its shutdown is complete, so a clean stop exits by that signal.
    log = (tmp_path / "server.log").read_text()
    assert exit_code in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log[-3000:]
    exit_code = "clean" if exit_code in (0, -signal.SIGTERM) else exit_code
    if expect_all:
        fault_row(
            "shutdown",
            f"{queued} requests queued at SIGTERM, grace {grace_s:g} s",
            f"all {queued} answered 200, then a clean exit",
            f"{len(completed)} answered 200, then exit {exit_code}"
            if len(completed) < queued
            else f"all {queued} answered 200, then a {exit_code} exit",
        )
        assert len(completed) == queued
    else:
        # Past the grace uvicorn cancels what is left: those get 503 not_ready (send again), never a second
        # answer; the image being computed finishes; the process exits soon after the grace.
        expected = "done within the grace 200, the rest 503 not_ready, clean exit soon after"
        fault_row(
            "shutdown",
            f"{queued} requests queued at SIGTERM, grace {grace_s:g} s (< the queue's time)",
            expected,
            expected
            if 1 <= len(completed) < queued and len(answered) == queued and took < grace_s + 5
            else f"{[outcome(r) for r in answered]}, exit after {took:.1f} s",
        )
        assert 1 <= len(completed) < queued and len(answered) == queued
        assert took < grace_s + 5


def test_requests_beyond_max_concurrent_requests_get_503_at_once_but_probes_pass(models_dir, fault_row):
    import threading

    from service.app import create_app
    from tests.helpers import running_app, settings_for

    release = threading.Event()
    release.set()
    entered = threading.Event()

    def hold(model_name, batch):
        entered.set()
        assert release.wait(60)

    async def scenario():
        app = create_app(
            settings_for(models_dir, max_concurrent_requests=2, max_batch_size=1, max_batch_wait_ms=0), batch_hook=hold
        )
        async with running_app(app) as client:
            release.clear()
            entered.clear()

            def post(i):
                return client.post(
                    "/assess",
                    content=body_of(i),
                    headers={"content-type": "image/png"},
                )

            held = [asyncio.ensure_future(post(i)) for i in range(2)]
            # Both in progress: one held in the model, the other queued behind it.
            assert await asyncio.to_thread(entered.wait, 30)
            worker = app.state.registry.get("default")
            deadline = time.monotonic() + 30
            while worker.queue_depth < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            probe = await client.get("/readyz")
            busy = await post(3)
            release.set()
            return busy, probe, await asyncio.gather(*held)

    busy, probe, held = asyncio.run(scenario())
    fault_row("overload", "a request beyond NORMGATE_MAX_CONCURRENT_REQUESTS=2", "503 overloaded", outcome(busy))
    assert busy.status_code == 503 and busy.json()["error"] == "overloaded" and busy.headers["retry-after"] == "1"
    assert probe.status_code == 200  # probes are not counted
    assert [r.status_code for r in held] == [200, 200]
