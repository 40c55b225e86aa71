"""The decode pool (service/ingest/decode_pool.py): worker processes that can be stopped, two lanes, the budget
checked from the header first, deadlines and disconnects that kill the decode, bounded queues.

Held workers: ``hold`` makes a worker's lane thread wait on an event before it sends its job, so the worker is
busy for exactly as long as a test needs. Slow decodes: a 7000² RGBA PNG of zeros
(~200 KB) takes 2–5 s to decode, far longer than the 0.3 s deadlines used against it.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from pydicom import uid

from models.imaging import DecodeLimits, decode_image, preprocess_batch
from models.imaging.limits import MIB
from service.errors import BadImage, ClientDisconnected, RequestTimeout, TooLarge
from service.ingest.decode_pool import LARGE_LANE_NICE, DecodeBacklogFull, DecodePool
from service.ingest.decode_worker import GridSpec
from service.ingest.upload import Upload
from tests.helpers import REPO, dicom_bytes, png_bytes, radiograph
from tests.models.imaging.data.make_ingest_corpus import dicom_bytes as corpus_dicom_bytes
from tests.models.imaging.data.make_ingest_corpus import dicom_dataset, png_chunk

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::UserWarning")]

SMALL = Upload(png_bytes(radiograph(48, 64, seed=1)), "image/png")


@functools.cache
def big_png(rows: int = 7000, cols: int = 7000) -> Upload:
    """An RGBA PNG of zeros: tiny to send (~200 KB), rows × cols pixels to decode (2–5 s for 7000²)."""
    raw = zlib.compress(b"\0" * ((4 * cols + 1) * rows), 9)
    ihdr = cols.to_bytes(4, "big") + rows.to_bytes(4, "big") + bytes([8, 6, 0, 0, 0])
    body = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")
    return Upload(body, "image/png")


def hold(worker, release: threading.Event) -> threading.Event:
    """Make ``worker`` wait for ``release`` before its next job is sent; returns an event set once it waits."""
    waiting = threading.Event()
    run = worker.run

    def held(job, abandoned):
        waiting.set()
        assert release.wait(30)
        return run(job, abandoned)

    worker.run = held
    return waiting


GRID = GridSpec((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def pool_for(**overrides) -> DecodePool:
    values = {
        "workers": 1,
        "max_waiting": 1,
        "limits": DecodeLimits(),
        "large_threshold_bytes": 256 * MIB,
        "nice": 0,
    }
    values.update(overrides)
    pool = DecodePool(**values)
    pool.start()
    return pool


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def ends(pid: int, within_s: float = 5.0) -> bool:
    """The process is gone (or a zombie) within ``within_s``: SIGKILL is delivered asynchronously."""
    limit = time.monotonic() + within_s
    while alive(pid):
        if time.monotonic() > limit:
            return False
        await asyncio.sleep(0.01)
    return True


def png_header_only(width: int, height: int, colour_type: int) -> Upload:
    """A PNG whose IHDR declares width × height of an 8-bit colour type, with one tiny IDAT."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, colour_type, 0, 0, 0])
    body = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return Upload(body + png_chunk(b"IEND", b""), "image/png")


def soon(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


async def started(pool: DecodePool) -> None:
    limit = time.monotonic() + 60
    while not pool.started:
        assert time.monotonic() < limit, "the decode processes never started"
        await asyncio.sleep(0.02)
    await pool.decode(SMALL, soon())  # the fork server is up and the codecs are warm


def test_the_grid_pixels_and_fields_are_what_decoding_in_process_gives():
    body = dicom_bytes(radiograph(40, 50, seed=3))

    async def scenario():
        pool = pool_for()
        try:
            await started(pool)
            upload = Upload(body, "application/dicom")
            with_pixels = await pool.decode(upload, soon(), grid=GRID, keep_pixels=True)
            grid_only = await pool.decode(upload, soon(), grid=GRID)
            shown = await pool.decode(upload, soon(), display=True)
            return with_pixels, grid_only, shown
        finally:
            pool.shutdown()

    with_pixels, grid_only, shown = asyncio.run(scenario())
    expected = decode_image(body, "application/dicom")
    expected_grid = preprocess_batch([expected.pixels], GRID.input_size, GRID.mean, GRID.std)[0].numpy()
    np.testing.assert_array_equal(with_pixels.decoded.pixels, expected.pixels)
    np.testing.assert_array_equal(with_pixels.grid, expected_grid)
    np.testing.assert_array_equal(grid_only.grid, expected_grid)
    assert grid_only.decoded.pixels.size == 0  # not asked for: never sent
    assert with_pixels.decoded.sop_instance_uid == expected.sop_instance_uid
    assert (grid_only.decoded.width, grid_only.decoded.window) == (50, expected.window)
    assert with_pixels.lane == "ordinary" and with_pixels.seconds > 0
    display = np.asarray(Image.open(io.BytesIO(shown.display_png)))
    np.testing.assert_array_equal(display, np.rint(expected.pixels * 255).astype(np.uint8))
    assert (shown.width, shown.height) == (50, 40)


def test_a_lane_refuses_beyond_its_workers_and_queue_and_recovers():
    async def scenario():
        pool = pool_for(workers=1, max_waiting=1)
        release = threading.Event()
        try:
            await started(pool)
            waiting = hold(pool.ordinary.workers[0], release)
            first = asyncio.ensure_future(pool.decode(SMALL, soon()))
            second = asyncio.ensure_future(pool.decode(SMALL, soon()))
            assert await asyncio.to_thread(waiting.wait, 30)
            await asyncio.sleep(0.05)
            saturated = pool.saturated
            with pytest.raises(DecodeBacklogFull) as refused:
                await pool.decode(SMALL, soon())
            release.set()
            results = await asyncio.gather(first, second)
            after = await pool.decode(SMALL, soon())
            return saturated, refused.value, [r.width for r in results], after.width, pool.saturated
        finally:
            release.set()
            pool.shutdown()

    saturated, refused, widths, after, saturated_after = asyncio.run(scenario())
    assert saturated and not saturated_after
    assert (refused.status, refused.code, refused.headers["Retry-After"]) == (503, "overloaded", "1")
    assert widths == [64, 64] and after == 64


def test_a_decode_running_at_the_deadline_is_killed_and_its_process_replaced():
    async def scenario():
        pool = pool_for(large_threshold_bytes=DecodeLimits().max_decode_bytes)  # one lane: the ordinary one
        try:
            await started(pool)
            worker = pool.ordinary.workers[0]
            old_pid = worker.process.pid
            upload = big_png()
            began = time.monotonic()
            with pytest.raises(RequestTimeout) as caught:
                await pool.decode(upload, time.monotonic() + 0.3)
            answered_after = time.monotonic() - began
            gone = await ends(old_pid)
            after = await pool.decode(SMALL, soon())
            return caught.value, answered_after, gone, old_pid, worker.process.pid, after.width
        finally:
            pool.shutdown()

    error, answered_after, gone, old_pid, new_pid, width = asyncio.run(scenario())
    assert (error.status, error.code) == (504, "timeout")
    assert "still being decoded" in error.detail and "the decode was stopped" in error.detail
    assert answered_after < 0.9  # at the deadline, not when the decode would have ended
    assert gone and new_pid != old_pid  # killed (its memory returned with it) and replaced
    assert width == 64


def test_a_client_that_disconnects_stops_its_decode():
    async def scenario():
        pool = pool_for(large_threshold_bytes=DecodeLimits().max_decode_bytes)
        try:
            await started(pool)
            old_pid = pool.ordinary.workers[0].process.pid
            upload = big_png()
            disconnected = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.3, disconnected.set_result, None)
            with pytest.raises(ClientDisconnected) as caught:
                await pool.decode(upload, soon(), disconnected)
            return caught.value, not await ends(old_pid)
        finally:
            pool.shutdown()

    error, still_alive = asyncio.run(scenario())
    assert (error.status, error.code) == (499, "client_disconnected") and not still_alive


def test_the_deadline_also_bounds_the_wait_for_a_worker():
    async def scenario():
        pool = pool_for(workers=1, max_waiting=2)
        release = threading.Event()
        try:
            await started(pool)
            waiting = hold(pool.ordinary.workers[0], release)
            held = asyncio.ensure_future(pool.decode(SMALL, soon()))
            assert await asyncio.to_thread(waiting.wait, 30)
            with pytest.raises(RequestTimeout) as caught:
                await pool.decode(SMALL, time.monotonic() + 0.1)
            release.set()
            await held
            return caught.value
        finally:
            release.set()
            pool.shutdown()

    error = asyncio.run(scenario())
    assert "waited to be decoded" in error.detail


def test_large_images_take_the_large_lane_and_never_hold_up_ordinary_ones():
    async def scenario():
        pool = pool_for(large_threshold_bytes=10 * MIB)
        release = threading.Event()
        try:
            await started(pool)
            waiting = hold(pool.large.workers[0], release)
            large = Upload(png_bytes(radiograph(600, 600, seed=2)), "image/png")  # 11.6 MiB estimated, SMALL 8.0
            held = asyncio.ensure_future(pool.decode(large, soon()))
            assert await asyncio.to_thread(waiting.wait, 30)
            ordinary = await asyncio.wait_for(pool.decode(SMALL, soon()), 10)
            release.set()
            large_result = await held
            return ordinary.lane, large_result.lane, large_result.width
        finally:
            release.set()
            pool.shutdown()

    ordinary_lane, large_lane, width = asyncio.run(scenario())
    assert (ordinary_lane, large_lane, width) == ("ordinary", "large", 600)


def test_a_header_only_the_decoder_reads_is_sent_on_to_the_large_lane():
    """A Deflated DICOM: the server cannot read its header cheaply; the ordinary worker finds it over its
    lane's ceiling and the large lane decodes it."""
    ds = dicom_dataset(np.full((512, 512), 1000, np.uint16), transfer_syntax=uid.DeflatedExplicitVRLittleEndian)
    body = corpus_dicom_bytes(ds)

    async def scenario():
        pool = pool_for(large_threshold_bytes=10 * MIB)
        try:
            await started(pool)
            return await pool.decode(Upload(body, "application/dicom"), soon())
        finally:
            pool.shutdown()

    result = asyncio.run(scenario())
    assert result.lane == "large" and result.decoded.width == 512


def test_over_the_budget_is_refused_from_the_header_without_a_worker():
    async def scenario():
        pool = pool_for(workers=1, max_waiting=0)
        release = threading.Event()
        try:
            await started(pool)
            waiting = hold(pool.ordinary.workers[0], release)
            held = asyncio.ensure_future(pool.decode(SMALL, soon()))
            assert await asyncio.to_thread(waiting.wait, 30)
            began = time.monotonic()
            with pytest.raises(TooLarge) as caught:  # while the only ordinary worker is busy
                # the bomb: 7745² RGBA (60 M pixels), 240 MB decoded, ~850 MiB estimated
                await pool.decode(png_header_only(7745, 7745, 6), soon())
            took = time.monotonic() - began
            release.set()
            await held
            return caught.value, took
        finally:
            release.set()
            pool.shutdown()

    error, took = asyncio.run(scenario())
    assert error.status == 413 and "7745×7745, 4 samples" in error.detail and "limit is 768 MiB" in error.detail
    assert took < 0.5


def test_a_worker_that_died_is_replaced_before_the_next_job():
    async def scenario():
        pool = pool_for()
        try:
            await started(pool)
            worker = pool.ordinary.workers[0]
            os.kill(worker.process.pid, 9)
            await asyncio.sleep(0.2)
            result = await pool.decode(SMALL, soon())
            return result.decoded.width
        finally:
            pool.shutdown()

    assert asyncio.run(scenario()) == 64


def test_decoder_refusals_keep_their_code():
    async def scenario():
        pool = pool_for()
        try:
            await started(pool)
            with pytest.raises(BadImage) as caught:
                await pool.decode(Upload(SMALL.body[:-40], "image/png"), soon())
            return caught.value
        finally:
            pool.shutdown()

    error = asyncio.run(scenario())
    assert (error.status, error.code) == (400, "bad_image")


def test_the_address_space_limit_turns_an_underestimate_into_a_memory_error():
    code = (
        "import numpy as np\n"
        "from service.ingest.decode_worker import limit_address_space\n"
        "limit_address_space(64 * 2**20)\n"
        "try:\n"
        "    np.ones(256 * 2**20, np.uint8)\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
        "np.ones(8 * 2**20, np.uint8)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["MemoryError", "ok"]


def _niceness(pid: int, tid: int | None = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid or pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is a Linux feature")
def test_decoding_runs_at_lower_priority_and_the_large_lane_lowest():
    async def scenario():
        pool = pool_for(nice=7)
        try:
            await started(pool)
            thread_niceness = await asyncio.get_running_loop().run_in_executor(
                pool.ordinary.executor, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            )
            await pool.decode(Upload(png_bytes(radiograph(600, 600, seed=2)), "image/png"), soon())
            return (
                thread_niceness,
                _niceness(pool.ordinary.workers[0].process.pid),
                _niceness(pool.large.workers[0].process.pid) if pool.large.workers[0].process else None,
            )
        finally:
            pool.shutdown()

    base = os.getpriority(os.PRIO_PROCESS, 0)
    thread, ordinary_process, large_process = asyncio.run(scenario())
    assert thread == min(base + 7, 19) and ordinary_process == min(base + 7, 19)
    assert large_process in (None, 19) and LARGE_LANE_NICE == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller's thread untouched
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == base  # and the main thread
