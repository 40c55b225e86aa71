"""models.imaging.grid against independent computations: dtype ranges by hand, the resize against Pillow's
antialiased bilinear filter (a separate C implementation of the same support-scaled triangle filter)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from models.imaging.grid import (
    grid_point_to_original,
    normalise,
    original_box_to_grid,
    preprocess_batch,
    resize_unit,
    to_unit_float,
)


def test_integers_scale_by_their_dtype_range():
    np.testing.assert_allclose(to_unit_float(np.array([[0, 51, 255]], np.uint8)), [[0.0, 0.2, 1.0]], atol=1e-7)
    np.testing.assert_allclose(to_unit_float(np.array([[0, 13107, 65535]], np.uint16)), [[0.0, 0.2, 1.0]], atol=1e-7)
    np.testing.assert_allclose(
        to_unit_float(np.array([[-32768, 0, 32767]], np.int16)), [[0.0, 32768 / 65535, 1.0]], atol=1e-7
    )


def test_floats_in_range_are_kept_and_out_of_range_are_clipped_without_touching_the_input():
    inside = np.array([[0.0, 0.25, 1.0]], np.float64)
    assert to_unit_float(inside).dtype == np.float32
    np.testing.assert_array_equal(to_unit_float(inside), [[0.0, 0.25, 1.0]])
    outside = np.array([[-0.5, 0.5, 1.5]], np.float32)
    np.testing.assert_array_equal(to_unit_float(outside), [[0.0, 0.5, 1.0]])
    np.testing.assert_array_equal(outside, [[-0.5, 0.5, 1.5]])
    assert np.isnan(to_unit_float(np.array([[np.nan, 0.5]], np.float32))[0, 0])


def test_non_2d_input_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        to_unit_float(np.zeros((2, 2, 3), np.uint8))


@pytest.mark.parametrize("src_hw, dst_hw", [((300, 250), (64, 48)), ((97, 131), (256, 256)), ((40, 60), (40, 30))])
def test_resize_matches_pillows_antialiased_bilinear(src_hw, dst_hw):
    x = np.random.default_rng(sum(src_hw)).random(src_hw, dtype=np.float32)
    ours = resize_unit(x, dst_hw).numpy()
    pillow = np.asarray(Image.fromarray(x, mode="F").resize(dst_hw[::-1], Image.BILINEAR))
    assert ours.shape == dst_hw
    np.testing.assert_allclose(ours, pillow, atol=2e-6)


def test_resize_of_a_read_only_array_warns_nothing_and_writes_nothing():
    x = np.random.default_rng(0).random((120, 100), dtype=np.float32)
    x.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resized = resize_unit(x, (32, 32))
        same_size = resize_unit(x, (120, 100))
    same_size.fill_(7.0)  # a copy, not a view of the caller's array
    assert float(x.max()) <= 1.0
    assert resized.shape == (32, 32)


def test_preprocess_batch_duplicates_gray_to_three_normalised_channels():
    gray = np.full((10, 10), 128, np.uint8)
    batch = preprocess_batch([gray, gray], (4, 4), mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.1))
    assert batch.shape == (2, 3, 4, 4)
    unit = 128 / 255
    expected = [(unit - 0.5) / 0.5, (unit - 0.4) / 0.25, (unit - 0.3) / 0.1]
    for channel, value in enumerate(expected):
        torch.testing.assert_close(batch[:, channel], torch.full((2, 4, 4), value), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalise(torch.zeros(1, 2, 2), (0.0,) * 3, (1.0,) * 3), torch.zeros(1, 3, 2, 2))


def test_grid_and_original_coordinates_map_pixel_centres():
    # grid 256 → original 3000 × 2500 (h × w): the centre pixel of the grid lands on the image's centre.
    assert grid_point_to_original(127.5, 127.5, (256, 256), (3000, 2500)) == (1250, 1500)
    assert grid_point_to_original(0, 0, (256, 256), (3000, 2500)) == (4, 5)
    assert grid_point_to_original(255, 255, (256, 256), (3000, 2500)) == (2495, 2994)
    assert original_box_to_grid((250, 300, 500, 600), (3000, 2500), (256, 256)) == pytest.approx(
        (25.6, 25.6, 51.2, 51.2)
    )
