"""Connections and lifecycle over real sockets (service/api/server.py): the header-read timeout uvicorn lacks,
the keep-alive timeout, draining on SIGTERM (/readyz 503 at once, accepted requests finish), and /docs without
a CDN. One server (``python -m tests.service.fault_server``: the service's own server, a model slowed to 1 s a
batch) serves every check; SIGTERM comes last.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import struct
import sys
import time
import zlib

import httpx
import pytest

from load_tests.driver import served
from service.app import create_app
from tests.helpers import png_bytes, radiograph, running_app, settings_for
from tests.service.fault_table import outcome

pytestmark = pytest.mark.timeout(240)

FAULT_SERVER = ("-m", "tests.service.fault_server")


def png_of_zeros(width: int, height: int) -> bytes:
    """An RGBA PNG of zeros: tiny to send, seconds to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    raw = zlib.compress(b"\0" * ((4 * width + 1) * height), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (or ``limit_s``), and when it closed."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.1)
    while time.monotonic() - started < limit_s:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def _status(raw: bytes) -> str:
    head = raw.split(b"\r\n", 1)[0].decode(errors="replace")
    return head.split(" ", 2)[1] if head.count(" ") >= 1 else "nothing"


def test_connections_time_out_and_sigterm_drains(models_dir, tmp_path, fault_row):
    settings = {
        "header_read_timeout_s": 1.0,
        "keep_alive_timeout_s": 1.0,
        "shutdown_grace_s": 20.0,
        "max_batch_size": 1,
        "max_batch_wait_ms": 0,
        "torch_threads": 1,
        "api_keys": "",
        "min_image_side": 16,  # the test images are small; too_small would answer before the model runs
        "test_batch_seconds": 1.0,  # tests/service/fault_server.py: every batch of the model takes 1 s longer
    }
    with served(models_dir, tmp_path / "server.log", command=(sys.executable, *FAULT_SERVER), **settings) as server:
        port = _port(server.url)

        # Headers trickled and never finished: 408 request_timeout and the connection closed, after ~1 s.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            opened = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for _ in range(3):
                time.sleep(0.3)
                sock.sendall(b"X-Slow: 1\r\n")
            slow, _ = _read_until_closed(sock, 10)
            slow_took = time.monotonic() - opened
        observed = f"{_status(slow)} {'request_timeout' if b'request_timeout' in slow else '?'}, closed"
        fault_row(
            "connections",
            "request headers trickled, never finished (timeout 1 s)",
            "408 request_timeout, closed",
            observed,
        )
        assert _status(slow) == "408" and b'"error":"request_timeout"' in slow, slow
        assert 0.9 <= slow_took < 4

        # A connection that sends nothing at all is closed too.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            silent, silent_took = _read_until_closed(sock, 10)
        fault_row(
            "connections",
            "connection opened, nothing sent (timeout 1 s)",
            "408 request_timeout, closed",
            f"{_status(silent)} {'request_timeout' if b'request_timeout' in silent else '?'}, closed",
        )
        assert _status(silent) == "408" and 0.9 <= silent_took < 4

        # Keep-alive: an idle connection after a complete answer is closed after NORMGATE_KEEP_ALIVE_TIMEOUT_S.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            idle, idle_took = _read_until_closed(sock, 10)
        assert _status(idle) == "200" and idle.count(b"HTTP/1.1") == 1 and 0.9 <= idle_took < 4

        # /docs works without the internet: every script and style it loads is served by the service itself.
        page = httpx.get(server.url + "/docs", timeout=10)
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assets = [httpx.get(server.url + s, timeout=10) for s in sources]
        fault_row(
            "connections",
            "/docs on a network without internet access",
            "every asset served by NormGate",
            "every asset served by NormGate"
            if page.status_code == 200
            and sources
            and all(s.startswith("/docs/") for s in sources)
            and all(a.status_code == 200 for a in assets)
            else f"{page.status_code}, loads {sources}",
        )
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
        assert sources and all(s.startswith("/docs/") for s in sources), sources
        assert all(a.status_code == 200 and len(a.content) > 100 for a in assets)
        assert "http://" not in page.text.replace(server.url, "") and "https://" not in page.text

        # A client that leaves while its image is being decoded: the decode is stopped, not finished.
        slow = png_of_zeros(7000, 7000)  # 49 M RGBA pixels: 2–5 s to decode
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = f"POST /assess HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(slow)}\r\n\r\n"
            sock.sendall(head.encode() + slow)
            time.sleep(0.5)
        limit = time.monotonic() + 15
        abandoned = 'normgate_decode_abandoned_total{lane="large",reason="disconnect"} 1.0'
        while abandoned not in (metrics := httpx.get(server.url + "/metrics", timeout=10).text):
            if time.monotonic() > limit:
                break
            time.sleep(0.2)
        fault_row(
            "decode budget",
            "client disconnects while its 7000² RGBA image is decoding",
            "the decode stopped",
            "the decode stopped" if abandoned in metrics else "not stopped",
        )
        assert abandoned in metrics

        # SIGTERM with two requests in the slow model: /readyz 503 at once, new work 503, both answered 200.
        async def drain():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                body = png_bytes(radiograph(48, 64, seed=1))
                held = [
                    asyncio.ensure_future(client.post("/assess", content=body, headers={"content-type": "image/png"}))
                    for _ in range(2)
                ]
                await asyncio.sleep(0.8)  # both accepted, the first in the model
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as fresh:
                    ready = await fresh.get("/readyz")
                    late = await fresh.post("/assess", content=body, headers={"content-type": "image/png"})
                    alive = await fresh.get("/healthz")
                answers = await asyncio.gather(*held)
                return ready, late, alive, answers

        ready, late, alive, answers = asyncio.run(drain())
        code = server.process.wait(60)
    fault_row("shutdown", "GET /readyz right after SIGTERM (requests still running)", "503 not_ready", outcome(ready))
    fault_row("shutdown", "new POST /assess while draining after SIGTERM", "503 not_ready", outcome(late))
    fault_row(
        "shutdown",
        "2 requests in the model at SIGTERM",
        "both answered 200, then a clean exit",
        "both answered 200, then a clean exit"
        if [a.status_code for a in answers] == [200, 200] and code in (0, -signal.SIGTERM)
        else f"{[outcome(a) for a in answers]}, exit {code}",
    )
    assert outcome(ready) == "503 not_ready" and "shutting down" in ready.json()["detail"]
    assert outcome(late) == "503 not_ready" and late.headers["retry-after"] == "5"
    assert alive.status_code == 200  # alive, only not ready
    assert [a.status_code for a in answers] == [200, 200]
    assert code in (0, -signal.SIGTERM)


def test_draining_app_refuses_new_work_and_answers_probes(models_dir):
    async def scenario():
        app = create_app(settings_for(models_dir))
        async with running_app(app) as client:
            app.state.draining = True
            return (
                await client.get("/readyz"),
                await client.get("/healthz"),
                await client.post(
                    "/assess", content=png_bytes(radiograph(40, 50)), headers={"content-type": "image/png"}
                ),
                await client.get("/metrics"),
            )

    ready, health, assess, metrics = asyncio.run(scenario())
    assert ready.status_code == 503 and ready.json()["error"] == "not_ready"
    assert health.status_code == 200 and metrics.status_code == 200
    assert assess.status_code == 503 and assess.json()["error"] == "not_ready" and assess.headers["retry-after"] == "5"
    assert 'normgate_rejected_total{reason="not_ready"} 1.0' in metrics.text
