"""models.imaging.assessability: which images cannot be judged at all, and why (docs/api.md, "Unassessable").

Statistics are checked against independent numpy computations; the decisions against images whose kind is
known by construction (constants, noise, quantised gradients) and against real-looking images that must pass:
synthetic radiographs from models.synth, the decodable files of the ingest corpus, pydicom's test images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from models.imaging import decode_file, decode_image
from models.imaging.assessability import (
    ANALYSIS_GRID,
    BLANK_RANGE,
    MIN_GREY_LEVELS,
    MIN_NEIGHBOUR_CORRELATION,
    MIN_RANGE,
    check_assessable,
    image_statistics,
)
from tests.helpers import dicom_bytes
from tests.models.imaging.data.make_ingest_corpus import CORPUS_DIR

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _smooth(height: int, width: int, low: float = 0.1, high: float = 0.9, seed: int = 0) -> np.ndarray:
    """A body-like smooth image with mild noise, spanning about [low, high]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    body = np.exp(-((xx - 0.5) ** 2 / 0.1 + (yy - 0.5) ** 2 / 0.2))
    image = low + (high - low) * body + rng.normal(0, 0.01 * (high - low), body.shape)
    return np.clip(image, 0, 1).astype(np.float32)


# ---- the statistics, against numpy ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 70), (300, 200), (1100, 1300)])
def test_statistics_match_an_independent_computation(shape):
    image = _smooth(*shape, seed=3)
    image[::7, ::5] = np.round(image[::7, ::5] * 255) / 255  # a mix of levels
    stats = image_statistics(image)
    # Grey levels and percentiles on the same regular subsample and 16-bit scale the module documents.
    step = max(1, int(np.ceil(np.sqrt(image.size / (1 << 18)))))
    sample = np.rint(image[::step, ::step].astype(np.float64) * 65535).astype(np.int64).ravel()
    assert stats.grey_levels == np.unique(sample).size
    assert stats.p1 == pytest.approx(np.percentile(sample, 1, method="inverted_cdf") / 65535, abs=1e-9)
    assert stats.p99 == pytest.approx(np.percentile(sample, 99, method="inverted_cdf") / 65535, abs=1e-9)
    # Neighbour correlation: np.corrcoef of neighbouring block means, the blocks built with explicit loops.
    lattice = max(1, min(shape) // (4 * ANALYSIS_GRID))
    sub = image[::lattice, ::lattice].astype(np.float64)
    block = max(1, min(sub.shape) // ANALYSIS_GRID)
    rows, cols = sub.shape[0] // block, sub.shape[1] // block
    grid = np.array(
        [
            [sub[r * block : (r + 1) * block, c * block : (c + 1) * block].mean() for c in range(cols)]
            for r in range(rows)
        ]
    )
    horizontal = np.corrcoef(grid[:, :-1].ravel(), grid[:, 1:].ravel())[0, 1]
    vertical = np.corrcoef(grid[:-1, :].ravel(), grid[1:, :].ravel())[0, 1]
    assert stats.neighbour_correlation == pytest.approx((horizontal + vertical) / 2, abs=1e-9)


# ---- each reason -----------------------------------------------------------------------------------------


def test_no_frames_comes_first():
    assert check_assessable(np.zeros((0, 0), np.float32), number_of_frames=0) == "no_frames"


@pytest.mark.parametrize(("shape", "min_side", "expected"), [((1, 1), 128, "too_small"), ((1, 1), 1, "blank")])
def test_a_one_pixel_image(shape, min_side, expected):
    assert check_assessable(np.full(shape, 0.5, np.float32), min_side=min_side) == expected


def test_too_small_is_the_shorter_side_below_the_minimum():
    assert check_assessable(_smooth(127, 600), min_side=128) == "too_small"
    assert check_assessable(_smooth(128, 600), min_side=128) is None
    assert check_assessable(_smooth(40, 40), min_side=16) is None


@pytest.mark.parametrize("value", [0.0, 0.42, 1.0])
def test_constant_images_are_blank(value):
    assert check_assessable(np.full((256, 300), value, np.float32)) == "blank"


def test_a_constant_image_with_a_few_odd_pixels_is_blank():
    image = np.full((400, 400), 0.3, np.float32)
    image[rows := np.arange(0, 400, 37), rows] = 1.0  # 11 pixels of 160 000
    stats = image_statistics(image)
    assert stats.percentile_range < BLANK_RANGE
    assert check_assessable(image) == "blank"


@pytest.mark.parametrize("shape", [(128, 128), (512, 700), (2000, 1800)])
@pytest.mark.parametrize("kind", ["uniform", "gaussian", "8-bit", "binary"])
def test_pure_noise_is_blank(shape, kind):
    rng = np.random.default_rng(sum(shape))
    noise = {
        "uniform": lambda: rng.random(shape),
        "gaussian": lambda: np.clip(rng.normal(0.5, 0.15, shape), 0, 1),
        "8-bit": lambda: rng.integers(0, 256, shape) / 255,
        "binary": lambda: rng.integers(0, 2, shape).astype(float),
    }[kind]().astype(np.float32)
    stats = image_statistics(noise)
    assert abs(stats.neighbour_correlation) < 0.1 < MIN_NEIGHBOUR_CORRELATION
    assert check_assessable(noise) == "blank"


def test_an_image_with_too_few_grey_levels_has_low_dynamic_range():
    yy, xx = np.mgrid[0:300, 0:300] / 299.0
    gradient = 0.8 * xx + 0.2 * yy  # a ramp over the whole scale
    for levels, expected in ((2, "low_dynamic_range"), (8, "low_dynamic_range"), (MIN_GREY_LEVELS, None)):
        quantised = (np.floor(gradient * levels).clip(0, levels - 1) / (levels - 1)).astype(np.float32)
        assert image_statistics(quantised).grey_levels == levels
        assert check_assessable(quantised) == expected, levels


def test_a_flat_image_has_low_dynamic_range():
    flat = _smooth(300, 300, low=0.40, high=0.43)  # thousands of 16-bit levels, 3 % of the scale
    stats = image_statistics(flat)
    assert stats.grey_levels > 1000 and BLANK_RANGE < stats.percentile_range < MIN_RANGE
    assert check_assessable(flat) == "low_dynamic_range"
    # 12-bit data in a 16-bit container (0–4095 of 65535) still passes.
    assert check_assessable(_smooth(300, 300, low=0.0, high=4095 / 65535)) is None


# ---- real-looking images pass --------------------------------------------------------------------------


def test_synthetic_radiographs_pass(tmp_path):
    from models.synth import generate

    generate(tmp_path, 0, 0, 3, size=256, seed=11, progress=False)
    for path in sorted((tmp_path / "test").glob("*.png")):
        assert check_assessable(decode_file(path).pixels) is None, path.name


# The ingest corpus's decodable files that are not radiograph-like, and what they are (tests/models/imaging/
# data/make_ingest_corpus.py): a 2-bit PNG (4 levels), a 40 × 20 JPEG of 6-pixel blocks (12 levels), and a
# "big-endian" DICOM whose pixel bytes were written little-endian, so it decodes to byte-swapped noise.
_CORPUS_EXPECTED = {
    "png_2bit_gray.png": "low_dynamic_range",
    "jpeg_exif_orientation_6.jpg": "low_dynamic_range",
    "dx_big_endian.dcm": "blank",
}


@pytest.mark.parametrize(
    "entry",
    [e for e in json.loads((CORPUS_DIR / "manifest.json").read_text()) if "ok" in e["expected"]],
    ids=lambda e: e["file"],
)
def test_decodable_ingest_corpus_files_pass(entry):
    image = decode_image((CORPUS_DIR / entry["file"]).read_bytes(), entry["content_type"])
    assert check_assessable(image.pixels, image.number_of_frames, min_side=16) == _CORPUS_EXPECTED.get(entry["file"])


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "JPGExtended.dcm", "examples_overlay.dcm", "ExplVR_BigEnd.dcm"],
)
def test_radiograph_like_pydicom_test_files_pass(name):
    image = decode_file(get_testdata_file(name))
    assert check_assessable(image.pixels, image.number_of_frames, min_side=32) is None


# ---- the decoder hands over the facts ----------------------------------------------------------------


def test_number_of_frames_zero_is_a_fact_not_a_decode_error():
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.full((200, 160), 90, np.uint8))))
    ds.NumberOfFrames = 0
    ds.BodyPartExamined = "CHEST "
    ds.ViewPosition = "PA"
    ds.SeriesDescription = "Thorax PA"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    image = decode_image(buffer.getvalue(), "application/dicom")
    assert image.number_of_frames == 0 and image.pixels.shape == (0, 0)
    assert (image.width, image.height) == (160, 200)
    assert (image.modality, image.body_part_examined, image.view_position, image.series_description) == (
        "CR",
        "CHEST",
        "PA",
        "Thorax PA",
    )
    assert check_assessable(image.pixels, image.number_of_frames) == "no_frames"


def test_single_frame_and_raster_images_report_one_frame_and_no_header_facts():
    from tests.helpers import png_bytes

    dicom = decode_image(dicom_bytes(np.full((20, 30), 7, np.uint8)), "application/dicom")
    assert dicom.number_of_frames == 1 and dicom.modality == "CR" and dicom.body_part_examined is None
    png = decode_image(png_bytes(np.full((20, 30), 7, np.uint8)), "image/png")
    assert png.number_of_frames == 1 and png.modality is None
