"""Pieces of service/serving/worker.py on their own: heatmap encoding, peak, device choice, decode admission."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from models.pointing_game import argmax_point
from service.ingest.decode_pool import DecodeBacklogFull, DecodePool, decode_thread_count
from service.serving.registry import resolve_device
from service.serving.worker import heatmap_to_png


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "L"
    return np.asarray(image)


def test_heatmap_png_is_min_max_scaled_8_bit():
    saliency = np.array([[0.5, 1.0], [1.5, 2.5]], dtype=np.float32)
    # (v - 0.5) / 2.0 * 255 → 0, 63.75, 127.5, 255 → rounded half to even by rint
    assert decode(heatmap_to_png(saliency)).tolist() == [[0, 64], [128, 255]]


def test_constant_heatmap_is_all_zero_not_nan():
    assert decode(heatmap_to_png(np.full((3, 4), 7.0, dtype=np.float32))).tolist() == [[0] * 4] * 3


def test_argmax_point_is_x_column_y_row_first_in_row_major_order():
    saliency = np.zeros((4, 6), dtype=np.float32)
    saliency[2, 5] = 1.0
    saliency[3, 1] = 1.0  # a tie later in row-major order
    assert argmax_point(saliency) == (5, 2)


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_decode_pool_refuses_beyond_its_capacity():
    async def scenario():
        pool = DecodePool(workers=1, max_waiting=1)
        release = threading.Event()
        first = asyncio.ensure_future(pool.run(release.wait, 30))
        second = asyncio.ensure_future(pool.run(lambda: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(DecodeBacklogFull) as refused:
            await pool.run(lambda: "third")
        release.set()
        results = await asyncio.gather(first, second)
        after = await pool.run(lambda: "fits again")
        pool.shutdown()
        return refused.value, results, after

    refused, results, after = asyncio.run(scenario())
    assert (refused.status, refused.code) == (503, "overloaded")
    assert refused.headers["Retry-After"] == "1"
    assert results == [True, "second"] and after == "fits again"


def _own_thread_niceness() -> tuple[int, int]:
    tid = threading.get_native_id()
    return tid, os.getpriority(os.PRIO_PROCESS, tid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is a Linux feature")
def test_decode_threads_run_at_lower_priority_and_the_rest_of_the_process_does_not():
    async def niceness_in(pool: DecodePool) -> tuple[int, int]:
        try:
            return await pool.run(_own_thread_niceness)
        finally:
            pool.shutdown()

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    tid, lowered = asyncio.run(niceness_in(DecodePool(workers=1, max_waiting=1, nice=7)))
    assert tid != threading.get_native_id()
    assert lowered == min(base + 7, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller's thread untouched
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == base  # and the main thread
    _, unchanged = asyncio.run(niceness_in(DecodePool(workers=1, max_waiting=1, nice=0)))
    assert unchanged == base


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 1), (4, 3), (16, 8)])
def test_decode_thread_count_leaves_the_model_a_core(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert decode_thread_count(0) == expected
    assert decode_thread_count(3) == 3  # an explicit setting is taken as it is
