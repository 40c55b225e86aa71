"""Pieces of service/serving/worker.py on their own: heatmap encoding, peak, device choice, decode admission."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from models.pointing_game import argmax_point
from service.ingest.decode_pool import decode_thread_count
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


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 1), (4, 3), (16, 8)])
def test_decode_thread_count_leaves_the_model_a_core(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert decode_thread_count(0) == expected
    assert decode_thread_count(3) == 3  # an explicit setting is taken as it is
