"""Hostile input through /assess (issue 17): bombs over the decode budget refused from their headers, PNG chunk
floods and JPEG scan floods refused before Pillow parses them, a decode still running at the deadline stopped
(504), ordinary images decoded while a large one is, /readyz 503 while the decode queue is full. Each case is a
row of docs/fault-table.md (``fault_row``).

Slow decodes: a PNG of zeros declaring 7000 × 7000 RGBA pixels (~200 KB) takes 2–5 s to decode.
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib

import pytest

from service.app import create_app
from tests.helpers import png_bytes, radiograph, running_app, settings_for
from tests.models.imaging.data.make_ingest_corpus import png_chunk
from tests.service.fault_table import outcome

pytestmark = pytest.mark.timeout(180)

SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORDINARY = png_bytes(radiograph(256, 256, seed=4))


def png_of_zeros(width: int, height: int, colour_type: int = 0, samples: int = 1, extra: bytes = b"") -> bytes:
    raw = zlib.compress(b"\0" * ((width * samples + 1) * height), 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return SIGNATURE + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int, colour_type: int, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return SIGNATURE + png_chunk(b"IHDR", ihdr) + extra + idat + png_chunk(b"IEND", b"")


def jpeg_with_scans(scans: int) -> bytes:
    """A baseline JPEG frame header followed by ``scans`` scan headers: only the marker count matters here."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 64, 64, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00" + b"\x00" * 16
    return b"\xff\xd8" + sof + sos * scans + b"\xff\xd9"


SLOW = png_of_zeros(7000, 7000, colour_type=6, samples=4)  # 49 M RGBA pixels: ~690 MiB estimated, the large lane


def post(client, body: bytes, content_type: str = "image/png"):
    return client.post("/assess", content=body, headers={"content-type": content_type})


def test_what_the_headers_give_away_is_refused_before_decoding(models_dir, fault_row):
    cases = {
        "the issue's bomb: 7745² RGBA PNG (60 M pixels ≤ NORMGATE_MAX_PIXELS), ~850 MiB estimated": (
            png_header_only(7745, 7745, 6),
            "image/png",
            "413 too_large",
        ),
        "PNG with 2 million empty tEXt chunks (24 MB)": (
            png_header_only(64, 64, 0, extra=png_chunk(b"tEXt", b"") * 2_000_000),
            "image/png",
            "413 too_large",
        ),
        "PNG with 300 metadata chunks (over 256)": (
            png_of_zeros(64, 64, extra=png_chunk(b"tEXt", b"k\0v") * 300),
            "image/png",
            "413 too_large",
        ),
        "PNG with 20 MB of iTXt metadata (over 16 MiB)": (
            png_of_zeros(64, 64, extra=png_chunk(b"iTXt", b"x" * (20 * 2**20))),
            "image/png",
            "413 too_large",
        ),
        "JPEG with 70 scans (over 64)": (jpeg_with_scans(70), "image/jpeg", "413 too_large"),
    }

    async def scenario():
        async with running_app(create_app(settings_for(models_dir, max_body_mb=64))) as client:
            answers = {}
            for name, (body, content_type, _) in cases.items():
                started = time.monotonic()
                response = await post(client, body, content_type)
                answers[name] = (response, time.monotonic() - started)
            return answers

    answers = asyncio.run(scenario())
    for name, (response, took) in answers.items():
        expected = cases[name][2]
        observed = outcome(response)
        fault_row(
            "decode budget",
            f"{name}",
            f"{expected} in < 1 s",
            f"{observed} in {'< 1' if took < 1 else f'{took:.1f}'} s",
        )
        assert observed == expected and took < 1.0, (name, response.text, took)
    assert "7745×7745, 4 samples of 8 bits" in answers[next(iter(cases))][0].json()["detail"]


def test_a_decode_still_running_at_the_deadline_is_stopped_and_ordinary_images_are_not_held_up(models_dir, fault_row):
    async def scenario():
        app = create_app(settings_for(models_dir, request_timeout_ms=700))
        async with running_app(app) as client:
            slow = asyncio.ensure_future(post(client, SLOW))
            await asyncio.sleep(0.2)  # the large lane has started on it
            began = time.monotonic()
            ordinary = await post(client, ORDINARY)
            ordinary_took = time.monotonic() - began
            timed_out = await slow
            metrics = (await client.get("/metrics")).text
            after = await post(client, ORDINARY)
            return ordinary, ordinary_took, timed_out, metrics, after

    ordinary, ordinary_took, timed_out, metrics, after = asyncio.run(scenario())
    fault_row(
        "decode budget",
        "a 7000² RGBA PNG (~690 MiB estimated) still decoding at a 0.7 s deadline",
        "504 timeout, the decode stopped",
        f"{outcome(timed_out)}, the decode "
        + ("stopped" if 'normgate_decode_abandoned_total{lane="large",reason="deadline"} 1.0' in metrics else "?"),
    )
    fault_row(
        "decode budget",
        "an ordinary image while a 7000² RGBA one decodes",
        "200, in its own lane",
        f"{outcome(ordinary)}, in its own lane"
        if ordinary_took < 2
        else f"{outcome(ordinary)} after {ordinary_took:.1f} s",
    )
    assert outcome(timed_out) == "504 timeout" and "the decode was stopped" in timed_out.json()["detail"]
    assert 'normgate_decode_abandoned_total{lane="large",reason="deadline"} 1.0' in metrics
    assert ordinary.status_code == 200 and ordinary_took < 2
    assert after.status_code == 200


def test_readyz_is_503_while_the_decode_queue_is_full(models_dir, fault_row):
    async def scenario():
        app = create_app(settings_for(models_dir, max_queue_size=2))
        async with running_app(app) as client:
            lane = app.state.decode_pool.ordinary
            before = await client.get("/readyz")
            lane.in_flight = lane.capacity  # as if that many uploads were decoding or waiting
            try:
                full = await client.get("/readyz")
                refused = await post(client, ORDINARY)
            finally:
                lane.in_flight = 0
            again = await client.get("/readyz")
            return before, full, refused, again

    before, full, refused, again = asyncio.run(scenario())
    fault_row("overload", "GET /readyz while the ordinary decode queue is full", "503 not_ready", outcome(full))
    assert before.status_code == 200 and again.status_code == 200
    assert outcome(full) == "503 not_ready" and "decode queue is full" in full.json()["detail"]
    assert outcome(refused) == "503 overloaded" and refused.headers["retry-after"] == "1"
