"""Model-free control maps: hand-computed expectations on tiny arrays, and independence from any model."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from models import controls
from models.controls import (
    TOPHAT_ELEMENT_FRACTION,
    brightest_map,
    centre_map,
    disk_element,
    element_diameter,
    tophat_map,
)
from models.pointing_game import argmax_point


def _gradient_with_dot(size: int = 64, dot: tuple[int, int] = (40, 20), height: float = 0.1) -> torch.Tensor:
    """A smooth left-to-right ramp 0.2 → 0.8 with a single-pixel bright dot (x, y) of ``height`` above it."""
    ramp = np.tile(np.linspace(0.2, 0.8, size, dtype=np.float32), (size, 1))
    ramp[dot[1], dot[0]] += height
    return torch.from_numpy(ramp)[None]


def test_tophat_finds_a_small_dot_on_a_smooth_gradient_where_the_brightest_pixel_does_not():
    img = _gradient_with_dot()
    th = tophat_map(img)[0]
    # A linear ramp is unchanged by an opening (inside the image): only the dot is left, at its own height.
    assert argmax_point(th) == (40, 20)
    assert th[20, 40].item() == pytest.approx(0.1, abs=1e-6)
    rest = th.clone()
    rest[20, 40] = 0.0
    assert rest[3:61, 3:61].max().item() < 1e-6  # away from the image border, nothing else
    # The brightest pixel is the ramp's right edge (0.8 > 0.5 + 0.1), far from the dot.
    assert argmax_point(brightest_map(img)[0])[0] == 63


def test_tophat_removes_structures_wider_than_its_disk():
    img = torch.zeros(1, 64, 64)
    img[0, 20:40, :] = 1.0  # a 20-row band: wider than the 5-px disk of a 64-px grid everywhere
    assert element_diameter(64, 64) == 5
    assert tophat_map(img).abs().max().item() == 0.0
    img[0, 50, 30] = 1.0  # a dot outside the band survives whole
    th = tophat_map(img)[0]
    assert th[50, 30].item() == 1.0 and th.sum().item() == 1.0


def test_tophat_equals_scipy_grey_opening_away_from_the_border():
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.random((48, 40)), 1.0).astype(np.float32)
    img += (rng.random((48, 40)) > 0.98) * 0.5
    footprint = disk_element(element_diameter(48, 40, 0.2)).astype(bool)
    expected = img - ndimage.grey_opening(img, footprint=footprint)
    got = tophat_map(torch.from_numpy(img)[None], 0.2)[0].numpy()
    r = footprint.shape[0]  # border handling differs (scipy reflects, OpenCV ignores): compare the interior
    assert np.allclose(got[r:-r, r:-r], expected[r:-r, r:-r], atol=1e-6)


def test_element_size_is_the_stated_fraction_of_the_side():
    assert TOPHAT_ELEMENT_FRACTION == 0.06
    assert element_diameter(256, 256) == 15  # 15.36 → 15
    assert element_diameter(600, 600) == 37  # 36 → the next odd number
    assert element_diameter(256, 100) == 7  # the shorter side counts: 6 → 7
    assert disk_element(5).tolist() == [
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
    ]
    with pytest.raises(ValueError, match="odd"):
        disk_element(4)
    with pytest.raises(ValueError, match="fraction"):
        element_diameter(64, 64, 1.5)


def test_centre_map_peaks_at_the_grid_centre():
    odd = centre_map(torch.zeros(2, 5, 5))
    assert argmax_point(odd[1]) == (2, 2) and odd[1, 2, 2].item() == 1.0
    assert odd[0, 0, 0].item() == pytest.approx(0.0, abs=1e-7)  # the corners are farthest
    even = centre_map(torch.zeros(1, 4, 6))[0]
    # The centre (1.5, 2.5) lies between four pixels that tie; the first in row-major order wins.
    assert even[1, 2] == even[1, 3] == even[2, 2] == even[2, 3]
    assert argmax_point(even) == (2, 1)


def test_brightest_map_is_a_copy_of_the_image():
    img = torch.rand(3, 8, 9)
    out = brightest_map(img)
    assert torch.equal(out, img)
    out[0, 0, 0] = 5.0
    assert img[0, 0, 0] != 5.0


def test_each_image_is_mapped_alone():
    a, b = _gradient_with_dot(32, (5, 6)), torch.rand(1, 32, 32)
    for fn in (tophat_map, brightest_map, centre_map):
        together = fn(torch.cat([a, b]))
        assert torch.equal(together[0], fn(a)[0]) and torch.equal(together[1], fn(b)[0])


def test_bad_input_is_refused():
    for fn in (tophat_map, brightest_map, centre_map):
        with pytest.raises(ValueError, match=r"\[B, H, W\]"):
            fn(torch.zeros(8, 8))
        with pytest.raises(ValueError, match="floating point"):
            fn(torch.zeros(1, 8, 8, dtype=torch.uint8))


def test_controls_use_no_model():
    """The module imports nothing from models.* and no torch.nn, and each control takes only images."""
    tree = ast.parse(Path(inspect.getfile(controls)).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not any(m.startswith(("models", "torch.nn", "torchvision")) for m in imported), imported
    assert "nn" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for fn in (tophat_map, brightest_map, centre_map):
        params = list(inspect.signature(fn).parameters)
        assert params[0] == "images" and set(params[1:]) <= {"element_fraction"}
