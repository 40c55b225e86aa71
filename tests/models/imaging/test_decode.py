"""Ingestion: bytes (DICOM, PNG, JPEG) → the one grayscale array the model sees, or an API error
(docs/api.md, "Errors").

Expected values are computed by hand from the standard's formulas (PS3.3 C.11) or from independently
constructed inputs, never by calling the code under test a second time.
"""

from __future__ import annotations

import io
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from models.imaging import (
    BadImage,
    DecodedImage,
    DecodeLimits,
    ImageError,
    TooLarge,
    UnsupportedImage,
    UnsupportedMediaType,
    decode_image,
    sniff_media_type,
    to_display_png,
)
from tests.models.imaging.data.make_ingest_corpus import (
    CORPUS_DIR,
    dicom_bytes,
    dicom_dataset,
    exif_jpeg,
    jpeg_bytes,
    png_bytes,
    png_declaring,
    radiograph,
)

# pydicom warns (rightly) about the malformed files below; the outcomes are what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DICOM = "application/dicom"
MANIFEST = json.loads((CORPUS_DIR / "manifest.json").read_text())


def _dicom(pixels, **kwargs) -> bytes:
    return dicom_bytes(dicom_dataset(np.asarray(pixels), **kwargs))


def _decode_dicom(pixels, limits: DecodeLimits = DecodeLimits(), **kwargs) -> DecodedImage:
    return decode_image(_dicom(pixels, **kwargs), DICOM, limits)


# ---- the committed corpus --------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_corpus_file_has_its_expected_outcome(entry):
    body = (CORPUS_DIR / entry["file"]).read_bytes()
    limits = DecodeLimits(**entry.get("limits", {}))
    expected = entry["expected"]
    if "ok" in expected:
        image = decode_image(body, entry["content_type"], limits)
        assert (image.width, image.height) == (expected["ok"]["width"], expected["ok"]["height"])
        assert image.pixels.shape == (image.height, image.width) and image.pixels.dtype == np.float32
        assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
        assert image.pixels.max() > image.pixels.min(), "a corpus image should keep its contrast"
    else:
        with pytest.raises(ImageError) as caught:
            decode_image(body, entry["content_type"], limits)
        assert caught.value.code == expected["error"], caught.value.detail
        assert caught.value.detail and "Traceback" not in caught.value.detail


def test_corpus_is_what_its_generator_writes(tmp_path):
    from tests.models.imaging.data.make_ingest_corpus import write_corpus

    write_corpus(tmp_path)
    for entry in MANIFEST:
        assert (tmp_path / entry["file"]).read_bytes() == (CORPUS_DIR / entry["file"]).read_bytes(), entry["file"]
    assert (tmp_path / "manifest.json").read_text() == (CORPUS_DIR / "manifest.json").read_text()


def test_corpus_is_small_and_every_file_is_listed():
    files = {p.name for p in CORPUS_DIR.iterdir() if p.name != "manifest.json"}
    assert files == {e["file"] for e in MANIFEST}
    assert sum((CORPUS_DIR / f).stat().st_size for f in files) < 1_000_000


# ---- pydicom's shipped test files ----------------------------------------------------------------------

# name → (width, height) when it must decode, else the error code.
PYDICOM_FILES = {
    "CT_small.dcm": (128, 128),
    "MR_small.dcm": (64, 64),
    "MR_small_RLE.dcm": (64, 64),
    "MR_small_bigendian.dcm": (64, 64),
    "MR_small_expb.dcm": (64, 64),
    "MR_small_implicit.dcm": (64, 64),
    "MR_small_jp2klossless.dcm": (64, 64),
    "MR_small_jpeg_ls_lossless.dcm": (64, 64),
    "MR_small_padded.dcm": (64, 64),
    "693_J2KI.dcm": (512, 512),
    "J2K_pixelrep_mismatch.dcm": (512, 512),
    "JPEG2000.dcm": (256, 1024),
    "JPGExtended.dcm": (256, 1024),
    "JPEGLSNearLossless_08.dcm": (10, 45),
    "JPEGLSNearLossless_16.dcm": (10, 50),
    "ExplVR_BigEnd.dcm": (80, 60),
    "GDCMJ2K_TextGBR.dcm": (400, 400),
    "SC_rgb_jpeg_dcmtk.dcm": (100, 100),
    "SC_rgb_jpeg_gdcm.dcm": (100, 100),
    "SC_rgb_rle.dcm": (100, 100),
    "SC_rgb_rle_16bit.dcm": (100, 100),
    "SC_rgb_rle_32bit.dcm": (100, 100),
    "SC_rgb_gdcm_KY.dcm": (100, 100),
    "SC_rgb_dcmtk_+eb+cy+np.dcm": (100, 100),
    "SC_rgb_jls_lossy_line.dcm": (100, 100),
    "SC_ybr_full_422_uncompressed.dcm": (100, 100),
    "SC_rgb_small_odd_jpeg.dcm": (3, 3),
    "examples_jpeg2k.dcm": (640, 480),
    "examples_overlay.dcm": (484, 300),
    "examples_palette.dcm": (800, 350),
    "examples_rgb_color.dcm": (320, 240),
    "image_dfl.dcm": (512, 512),
    "liver_1frame.dcm": (512, 512),
    "rtdose_1frame.dcm": (10, 10),
    "rtdose_rle_1frame.dcm": (10, 10),
    "MR_truncated.dcm": "bad_image",
    "JPEG-lossy.dcm": "bad_image",
    "JPEG2000-embedded-sequence-delimiter.dcm": "bad_image",
    "badVR.dcm": "bad_image",
    "meta_missing_tsyntax.dcm": "bad_image",
    "nested_priv_SQ.dcm": "bad_image",
    "rtplan.dcm": "bad_image",
    "rtplan_truncated.dcm": "bad_image",
    "test-SR.dcm": "bad_image",
    "waveform_ecg.dcm": "bad_image",
    "ExplVR_LitEndNoMeta.dcm": "bad_image",
    "ExplVR_BigEndNoMeta.dcm": "bad_image",
    "no_meta.dcm": "bad_image",
    "SC_rgb_rle_2frame.dcm": "bad_parameter",
    "examples_ybr_color.dcm": "bad_parameter",
    "rtdose.dcm": "bad_parameter",
    "rtdose_rle.dcm": "bad_parameter",
}


@pytest.mark.parametrize("name", sorted(PYDICOM_FILES))
def test_pydicom_test_file(name):
    body = Path(get_testdata_file(name)).read_bytes()
    expected = PYDICOM_FILES[name]
    if isinstance(expected, tuple):
        image = decode_image(body, DICOM)
        assert (image.width, image.height) == expected
        assert image.pixels.shape == (expected[1], expected[0])
        assert image.source == "dicom" and 0.0 <= image.pixels.min() <= image.pixels.max() <= 1.0
    else:
        with pytest.raises(ImageError) as caught:
            decode_image(body, DICOM)
        assert caught.value.code == expected


def test_every_transfer_syntax_of_mr_small_gives_the_same_image():
    """Lossless encodings of one image (native LE/BE, implicit, RLE, JPEG 2000, JPEG-LS) decode identically."""
    reference = decode_image(Path(get_testdata_file("MR_small.dcm")).read_bytes(), DICOM)
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ):
        other = decode_image(Path(get_testdata_file(name)).read_bytes(), DICOM)
        np.testing.assert_array_equal(other.pixels, reference.pixels, err_msg=name)


def test_mr_small_uses_its_first_window_by_the_standard_formula():
    path = get_testdata_file("MR_small.dcm")
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)  # MR_small has no rescale
    center, width = 600.0, 1600.0  # its (0028,1050) / (0028,1051)
    expected = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    image = decode_image(Path(path).read_bytes(), DICOM)
    assert image.window == (center, width)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_dicom_identifiers_come_back_and_patient_data_does_not():
    image = _decode_dicom(radiograph(), bits_stored=12)
    assert image.sop_instance_uid == "1.2.826.0.1.3680043.8.498.7410.1"
    assert image.study_instance_uid == "1.2.826.0.1.3680043.8.498.7410.2"
    assert image.series_instance_uid == "1.2.826.0.1.3680043.8.498.7410.3"
    assert image.photometric == "MONOCHROME2" and image.bits_stored == 12
    fields = {k: v for k, v in vars(image).items() if k != "pixels"}
    assert "Phantom" not in repr(fields)


# ---- DICOM pixel pipeline against hand computations ----------------------------------------------------


def test_monochrome1_and_monochrome2_of_the_same_image_are_equal_min_max():
    stored = radiograph(bits=12)
    mono2 = _decode_dicom(stored, bits_stored=12)
    mono1 = _decode_dicom(4095 - stored, bits_stored=12, photometric="MONOCHROME1")
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)
    # min–max: the darkest stored MONOCHROME2 value is 0, the brightest 1
    assert mono2.pixels.flat[stored.argmin()] == 0.0 and mono2.pixels.flat[stored.argmax()] == 1.0


@pytest.mark.parametrize("function, mono1_center", [("LINEAR", 4095 + 1 - 1500), ("LINEAR_EXACT", 4095 - 1500)])
def test_monochrome1_and_monochrome2_of_the_same_image_are_equal_windowed(function, mono1_center):
    """Stored MONOCHROME1 values are 4095 − v. The LINEAR window is defined with (c − 0.5), so the mirrored
    center is 4096 − c; LINEAR_EXACT mirrors at 4095 − c."""
    stored = radiograph(bits=12)
    mono2 = _decode_dicom(stored, bits_stored=12, WindowCenter=1500, WindowWidth=1200, VOILUTFunction=function)
    mono1 = _decode_dicom(
        4095 - stored,
        bits_stored=12,
        photometric="MONOCHROME1",
        WindowCenter=mono1_center,
        WindowWidth=1200,
        VOILUTFunction=function,
    )
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)
    assert 0.0 < mono2.pixels.mean() < 1.0


def test_linear_window_matches_hand_computed_values():
    # c = 1000, w = 1000: 0 for x ≤ 999.5 − 499.5 = 500; 1 for x > 999.5 + 499.5 = 1499; else (x − 999.5)/999 + 0.5
    stored = [[0, 499, 500, 501, 1000, 1499, 1500, 4095]]
    expected = [0.0, 0.0, 0.0, 1.0 / 999, 0.5 + 0.5 / 999, 1.0, 1.0, 1.0]  # 501: (501 − 999.5)/999 + 0.5
    image = _decode_dicom(stored, bits_stored=12, WindowCenter=[1000, 40], WindowWidth=[1000, 400])
    np.testing.assert_allclose(image.pixels[0], expected, atol=1e-6)
    assert image.window == (1000.0, 1000.0), "the first of several windows applies"


def test_linear_exact_and_sigmoid_windows_match_hand_computed_values():
    stored = [[0, 500, 1000, 1250, 1500, 4095]]
    exact = _decode_dicom(stored, bits_stored=12, WindowCenter=1000, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(exact.pixels[0], [0.0, 0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    sigmoid = _decode_dicom(stored, bits_stored=12, WindowCenter=1000, WindowWidth=1000, VOILUTFunction="SIGMOID")
    hand = [1 / (1 + math.exp(-4 * (x - 1000) / 1000)) for x in stored[0]]
    np.testing.assert_allclose(sigmoid.pixels[0], hand, atol=1e-6)
    assert sigmoid.pixels[0][3] == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)


def test_rescale_slope_intercept_with_signed_pixels():
    # stored −1000, −1, 0, 1000, 2000 → ×2 − 100 → −2100, −102, −100, 1900, 3900
    # window c = 900, w = 4001: 0 for v ≤ −1100.5, 1 for v > 2899.5, else (v − 899.5)/4000 + 0.5
    stored = np.array([[-1000, -1, 0, 1000, 2000]], dtype=np.int16)
    image = _decode_dicom(
        stored, signed=True, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=900, WindowWidth=4001
    )
    np.testing.assert_allclose(image.pixels[0], [0.0, 0.249625, 0.250125, 0.750125, 1.0], atol=1e-6)


def test_bits_stored_masks_high_bits_and_sign_extends():
    # 12 bits unsigned in 16 with junk in the top nibble: 0xF000 → 0, 0xFFFF → 4095, 0x1800 → 2048
    unsigned = _decode_dicom(np.array([[0xF000, 0xFFFF, 0x1800]], np.uint16), bits_stored=12)
    np.testing.assert_allclose(unsigned.pixels[0], [0.0, 1.0, 2048 / 4095], atol=1e-6)
    # 10 bits signed: 0x200 → −512, 0x3FF → −1, 0 → 0, 0x1FF → 511; min–max → (v + 512) / 1023
    words = np.array([[0x0200, 0x03FF, 0x0000, 0x01FF]], np.uint16).view(np.int16)
    signed = _decode_dicom(words, bits_stored=10, signed=True)
    np.testing.assert_allclose(signed.pixels[0], [0.0, 511 / 1023, 512 / 1023, 1.0], atol=1e-6)


# Images over 2^18 pixels take the look-up-table path (one float64 pipeline per stored value, then a look-up
# in row strips); these check it against the per-pixel formulas on a 600 × 500 image.
_LARGE = (600, 500)


def _large_stored(low: int, high: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(high - low)
    stored = rng.integers(low, high + 1, size=_LARGE).astype(dtype)
    stored[0, 0], stored[-1, -1] = low, high  # both ends present, so min–max is exact
    return stored


@pytest.mark.parametrize("case", ["min-max", "linear-window", "monochrome1-window", "signed-slope-sigmoid"])
def test_large_images_match_the_per_pixel_formulas(case):
    if case == "min-max":
        stored = _large_stored(100, 3000, np.uint16)
        image = _decode_dicom(stored, bits_stored=12)
        expected = (stored - 100.0) / 2900.0
    elif case == "linear-window":
        stored = _large_stored(0, 4095, np.uint16)
        image = _decode_dicom(stored, bits_stored=12, WindowCenter=1000, WindowWidth=1000)
        expected = np.clip((stored - 999.5) / 999.0 + 0.5, 0.0, 1.0)
    elif case == "monochrome1-window":
        stored = _large_stored(0, 4095, np.uint16)
        image = _decode_dicom(
            stored,
            bits_stored=12,
            photometric="MONOCHROME1",
            WindowCenter=2000,
            WindowWidth=3000,
            VOILUTFunction="LINEAR_EXACT",
        )
        expected = 1.0 - np.clip((stored - 2000.0) / 3000.0 + 0.5, 0.0, 1.0)
    else:
        stored = _large_stored(-2000, 2000, np.int16)
        image = _decode_dicom(
            stored,
            signed=True,
            RescaleSlope=-0.5,
            RescaleIntercept=10,
            WindowCenter=0,
            WindowWidth=800,
            VOILUTFunction="SIGMOID",
        )
        expected = 1.0 / (1.0 + np.exp(-4.0 * (stored * -0.5 + 10.0) / 800.0))
    assert image.pixels.shape == _LARGE and image.pixels.size > 1 << 18
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_pixel_padding_is_left_out_of_min_max_and_ends_black():
    stored = np.array([[0, 100, 200, 300]], np.uint16)
    mono2 = _decode_dicom(stored, bits_stored=12, PixelPaddingValue=0)
    np.testing.assert_allclose(mono2.pixels[0], [0.0, 0.0, 0.5, 1.0], atol=1e-6)
    # MONOCHROME1: min–max over 100..300 then inverted → 1, 0.5, 0; the padding stays black
    mono1 = _decode_dicom(stored, bits_stored=12, photometric="MONOCHROME1", PixelPaddingValue=0)
    np.testing.assert_allclose(mono1.pixels[0], [0.0, 1.0, 0.5, 0.0], atol=1e-6)


def test_pixel_padding_range_limit_and_signed_padding_value():
    stored = np.array([[4000, 4090, 4095, 1000, 3000]], np.uint16)
    image = _decode_dicom(stored, bits_stored=12, PixelPaddingValue=4095, PixelPaddingRangeLimit=4000)
    np.testing.assert_allclose(image.pixels[0], [0.0, 0.0, 0.0, 0.0, 1.0], atol=1e-6)
    # CT-style: signed pixels padded with −2000, windowed: padding is black even though it is below the window
    ct = np.array([[-2000, -1000, 0, 1000]], np.int16)
    image = _decode_dicom(
        ct, signed=True, PixelPaddingValue=-2000, WindowCenter=0, WindowWidth=2001, VOILUTFunction="LINEAR_EXACT"
    )
    np.testing.assert_allclose(image.pixels[0], [0.0, 0.5 - 1000 / 2001, 0.5, 0.5 + 1000 / 2001], atol=1e-6)


def test_voi_lut_sequence_is_preferred_to_the_window():
    stored = np.array([[5, 10, 11, 12, 13, 20]], np.uint16)
    ds = dicom_dataset(stored, bits_stored=12, WindowCenter=100, WindowWidth=10)
    item = Dataset()
    item.LUTDescriptor = [4, 10, 8]  # 4 entries, first mapped value 10, 8 bits per entry
    item.LUTData = [0, 85, 170, 255]
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]
    image = decode_image(dicom_bytes(ds), DICOM)
    # below the first mapped value → first entry; above the last → last entry
    np.testing.assert_allclose(image.pixels[0], [0.0, 0.0, 85 / 255, 170 / 255, 1.0, 1.0], atol=1e-6)
    assert image.window is None


def test_modality_lut_sequence():
    stored = np.array([[0, 1, 2, 5]], np.uint16)
    ds = dicom_dataset(stored, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [3, 0, 16]
    item.LUTData = [0, 1000, 4000]
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    item.ModalityLUTType = "OD"
    ds.ModalityLUTSequence = [item]
    image = decode_image(dicom_bytes(ds), DICOM)
    # modality values 0, 1000, 4000, 4000 → min–max
    np.testing.assert_allclose(image.pixels[0], [0.0, 0.25, 1.0, 1.0], atol=1e-6)


def test_constant_image_without_window_is_black_not_nan():
    image = _decode_dicom(np.full((4, 4), 700, np.uint16), bits_stored=12)
    assert np.all(image.pixels == 0.0)


def test_rgb_and_ybr_dicom_become_bt601_luminance():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    image = _decode_dicom(rgb, photometric="RGB", bits_allocated=8)
    np.testing.assert_allclose(image.pixels[0], [0.299, 0.587, 0.114, 1.0, 0.0], atol=1e-6)
    # YBR_FULL (PS3.3 C.7.6.3.1.2): Y = .299R + .587G + .114B, Cb/Cr offset 128: a neutral grey of 100 and
    # pure red (Y 76.245, Cb 84.97, Cr 255.5 → clipped 255) built by hand
    ybr = np.array([[[100, 128, 128], [76, 85, 255]]], np.uint8)
    image = _decode_dicom(ybr, photometric="YBR_FULL", bits_allocated=8)
    assert image.pixels[0, 0] == pytest.approx(100 / 255, abs=1.5 / 255)
    assert image.pixels[0, 1] == pytest.approx(0.299, abs=3 / 255)


def test_palette_colour_dicom_uses_its_lookup_tables():
    indices = np.array([[0, 51, 255]], np.uint8)
    ramp = np.arange(256, dtype=np.uint16) * 257
    image = _decode_dicom(
        indices,
        photometric="PALETTE COLOR",
        bits_allocated=8,
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=ramp.tobytes(),
        GreenPaletteColorLookupTableData=(65535 - ramp).tobytes(),
        BluePaletteColorLookupTableData=np.zeros(256, np.uint16).tobytes(),
    )
    # index i → (i/255, 1 − i/255, 0) → .299 i/255 + .587 (1 − i/255)
    expected = [0.299 * i / 255 + 0.587 * (1 - i / 255) for i in (0, 51, 255)]
    np.testing.assert_allclose(image.pixels[0], expected, atol=1e-5)


# ---- limits: checked from headers before anything is decoded -----------------------------------------------


def test_png_bomb_is_refused_from_its_header_without_allocating(monkeypatch):
    def no_load(self):  # pragma: no cover - reaching it is the failure
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    before = Image.MAX_IMAGE_PIXELS
    started = time.perf_counter()
    with pytest.raises(TooLarge) as caught:
        decode_image(png_declaring(100_000, 100_000), "image/png")
    assert time.perf_counter() - started < 1.0
    assert caught.value.code == "too_large" and "100000×100000" in caught.value.detail
    assert before == Image.MAX_IMAGE_PIXELS, "Pillow's process-wide limit is not touched"


def test_our_pixel_limit_replaces_pillows():
    small = png_bytes(Image.fromarray(np.zeros((40, 50), np.uint8)))
    with pytest.raises(TooLarge):
        decode_image(small, "image/png", DecodeLimits(max_pixels=1999))
    assert decode_image(small, "image/png", DecodeLimits(max_pixels=2000)).width == 50
    with pytest.raises(TooLarge):
        decode_image(
            jpeg_bytes(Image.fromarray(np.zeros((40, 50), np.uint8))), "image/jpeg", DecodeLimits(max_pixels=1999)
        )


def test_pillows_bomb_check_does_not_override_a_higher_limit_of_ours(monkeypatch):
    """20000 × 10000 = 200 M pixels is past Pillow's own error threshold (2 × MAX_IMAGE_PIXELS ≈ 179 M); with
    our limits at 300 M pixels (and a decode budget to match) the header passes and decoding proceeds to load() (stopped here by a sentinel)."""
    import warnings

    def sentinel_load(self):
        raise RuntimeError("reached load")

    monkeypatch.setattr(ImageFile.ImageFile, "load", sentinel_load)
    assert 2 * Image.MAX_IMAGE_PIXELS < 20_000 * 10_000
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(BadImage) as caught:
            decode_image(
                png_declaring(20_000, 10_000),
                "image/png",
                DecodeLimits(max_pixels=300_000_000, max_decode_bytes=2**40),
            )
    assert "reached load" in caught.value.detail


def test_dicom_rows_columns_over_the_limit_are_refused_before_decoding(monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    def no_decode(*args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Decoder, "as_array", no_decode)
    body = _dicom(radiograph(), bits_stored=12)  # 64 × 48 = 3072 pixels
    with pytest.raises(TooLarge) as caught:
        decode_image(body, DICOM, DecodeLimits(max_pixels=3071))
    assert "64×48" in caught.value.detail
    frames = dicom_bytes(dicom_dataset(None, rows=48, columns=64, NumberOfFrames=3, pixel_bytes=b"\0" * 18432))
    with pytest.raises(TooLarge):
        decode_image(frames, DICOM, DecodeLimits(max_pixels=3 * 3072 - 1))  # frames count too
    with pytest.raises(UnsupportedImage) as caught:
        decode_image(frames, DICOM)
    assert caught.value.detail == "multi-frame DICOM is not supported here; send one frame per instance"


def test_body_over_the_limit_is_refused():
    with pytest.raises(TooLarge) as caught:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png", DecodeLimits(max_body_bytes=100))
    assert caught.value.code == "too_large"


# ---- PNG / JPEG ---------------------------------------------------------------------------------------------


def test_sixteen_bit_png_keeps_its_precision():
    values = np.array([[0, 1, 32768, 65535]], np.uint16)
    image = decode_image(png_bytes(Image.fromarray(values)), "image/png")
    np.testing.assert_allclose(image.pixels[0], values[0] / 65535, atol=1e-7)
    assert image.bits_stored == 16 and image.source == "png"


def test_palette_png_becomes_luminance():
    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([255, 0, 0, 0, 0, 255, 255, 255, 255])
    palette_image.putdata([0, 1, 2])
    image = decode_image(png_bytes(palette_image), "image/png")
    np.testing.assert_allclose(image.pixels[0], [0.299, 0.114, 1.0], atol=1e-6)


def test_rgba_png_is_composited_over_black():
    rgba = np.array([[[200, 100, 50, 128], [200, 100, 50, 255], [255, 255, 255, 0]]], np.uint8)
    image = decode_image(png_bytes(Image.fromarray(rgba, "RGBA")), "image/png")
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(image.pixels[0], [luma * 128 / 255, luma, 0.0], atol=1e-6)


def test_8_bit_gray_jpeg_and_png_scale_by_255():
    gray = np.array([[0, 51, 255]], np.uint8)
    image = decode_image(png_bytes(Image.fromarray(gray)), None)
    np.testing.assert_allclose(image.pixels[0], [0.0, 0.2, 1.0], atol=1e-7)
    flat = decode_image(jpeg_bytes(Image.fromarray(np.full((16, 16), 200, np.uint8)), quality=100), "image/jpeg")
    assert flat.pixels.mean() == pytest.approx(200 / 255, abs=1.5 / 255) and flat.bits_stored == 8


@pytest.mark.parametrize(
    "orientation, size, bright_corner",
    [
        (1, (40, 20), "top-left"),
        (6, (20, 40), "top-right"),  # rotate 90° clockwise to display
        (3, (40, 20), "bottom-right"),
        (8, (20, 40), "bottom-left"),
    ],
)
def test_exif_orientation_is_applied(orientation, size, bright_corner):
    image = decode_image(exif_jpeg(orientation), "image/jpeg")
    assert (image.width, image.height) == size
    h, w = image.pixels.shape
    corners = {
        "top-left": image.pixels[1, 1],
        "top-right": image.pixels[1, w - 2],
        "bottom-left": image.pixels[h - 2, 1],
        "bottom-right": image.pixels[h - 2, w - 2],
    }
    for corner, value in corners.items():
        if corner == bright_corner:
            assert value > 0.8, (corner, value)
        else:
            assert value < 0.2, (corner, value)


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_rasters_are_refused_not_partially_decoded(kind):
    pixels = Image.fromarray(radiograph(96, 96, bits=8).astype(np.uint8))
    body = png_bytes(pixels) if kind == "png" else jpeg_bytes(pixels)
    for cut in (len(body) // 3, len(body) // 2, len(body) - 40):
        with pytest.raises(BadImage):
            decode_image(body[:cut], f"image/{kind}")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ---- media types and sniffing ------------------------------------------------------------------------------


def test_sniffing_recognises_each_kind():
    assert sniff_media_type(png_bytes(Image.new("L", (2, 2)))) == "image/png"
    assert sniff_media_type(jpeg_bytes(Image.new("L", (2, 2)))) == "image/jpeg"
    assert sniff_media_type(_dicom(radiograph(), bits_stored=12)) == "application/dicom"
    raw = dicom_bytes(dicom_dataset(radiograph(), transfer_syntax=uid.ImplicitVRLittleEndian), preamble=False)
    assert raw[128:132] != b"DICM" and sniff_media_type(raw) == "application/dicom"
    big_endian_raw = Path(get_testdata_file("ExplVR_BigEndNoMeta.dcm")).read_bytes()
    assert sniff_media_type(big_endian_raw) == "application/dicom"
    assert sniff_media_type(b"GIF89a" + b"\0" * 200) is None
    assert sniff_media_type(b"") is None and sniff_media_type(b"\x89PN") is None


def test_content_type_handling():
    png = png_bytes(Image.new("L", (3, 2), 128))
    assert decode_image(png, "image/png; charset=binary").width == 3
    assert decode_image(png, "IMAGE/PNG").width == 3
    assert decode_image(png, "application/octet-stream").source == "png"
    assert decode_image(png, None).source == "png"
    with pytest.raises(UnsupportedMediaType) as caught:
        decode_image(png, "application/dicom")
    assert "image/png" in caught.value.detail and caught.value.code == "unsupported_media_type"
    with pytest.raises(UnsupportedMediaType):
        decode_image(png, "image/gif")
    with pytest.raises(UnsupportedMediaType):
        decode_image(png, "multipart/form-data; boundary=x")


def test_empty_and_garbage_bodies_are_bad_images():
    for content_type in (None, "image/png", "image/jpeg", DICOM):
        with pytest.raises(BadImage) as caught:
            decode_image(b"", content_type)
        assert caught.value.detail == "the body is empty"
    garbage = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for content_type in (None, "application/octet-stream", "image/png", "image/jpeg", DICOM):
        with pytest.raises(BadImage):
            decode_image(garbage, content_type)


def test_error_classes_carry_the_api_error_codes():
    assert [cls.code for cls in (BadImage, TooLarge, UnsupportedMediaType, UnsupportedImage)] == [
        "bad_image",
        "too_large",
        "unsupported_media_type",
        "bad_parameter",
    ]
    error = TooLarge("over")
    assert isinstance(error, ImageError) and error.detail == "over" and str(error) == "over"


# ---- display PNG, threads, fuzzing --------------------------------------------------------------------------


def test_display_png_is_exactly_what_the_model_sees():
    image = _decode_dicom(radiograph(), bits_stored=12, WindowCenter=2000, WindowWidth=3000)
    shown = Image.open(io.BytesIO(to_display_png(image)))
    assert shown.mode == "L" and shown.size == (image.width, image.height)
    np.testing.assert_array_equal(np.asarray(shown), np.rint(image.pixels * 255).astype(np.uint8))


def test_concurrent_decoding_gives_the_same_answers():
    bodies = [(_dicom(radiograph(seed=s), bits_stored=12), DICOM) for s in range(3)]
    bodies += [
        (Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes(), DICOM),
        (exif_jpeg(6), "image/jpeg"),
        (png_bytes(Image.fromarray(radiograph().astype(np.uint16))), None),
    ]
    single = [decode_image(body, ct).pixels for body, ct in bodies]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda pair: decode_image(*pair).pixels, bodies * 4))
    for i, pixels in enumerate(threaded):
        np.testing.assert_array_equal(pixels, single[i % len(bodies)])


def _fuzz_seeds() -> list[tuple[bytes, str | None]]:
    small = radiograph(16, 12, bits=12)
    return [
        (png_bytes(Image.fromarray((small >> 4).astype(np.uint8))), "image/png"),
        (png_bytes(Image.fromarray(small.astype(np.uint16))), None),
        (jpeg_bytes(Image.fromarray((small >> 4).astype(np.uint8))), "image/jpeg"),
        (_dicom(small, bits_stored=12, WindowCenter=2000, WindowWidth=3000, PixelPaddingValue=0), DICOM),
        ((CORPUS_DIR / "dx_rle.dcm").read_bytes(), DICOM),
        ((CORPUS_DIR / "dx_deflated.dcm").read_bytes(), DICOM),
        (Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes(), DICOM),
    ]


def _assert_decoded_or_refused(body: bytes, content_type: str | None) -> None:
    try:
        image = decode_image(body, content_type, DecodeLimits(max_pixels=1_000_000))
    except ImageError as error:
        assert error.code in ("bad_image", "too_large", "unsupported_media_type", "bad_parameter")
        assert isinstance(error.detail, str) and error.detail
        return
    assert isinstance(image, DecodedImage)
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (image.height, image.width)
    assert np.isfinite(image.pixels).all() and image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0


FUZZ_SEEDS = _fuzz_seeds()


@st.composite
def _mutated(draw):
    body, content_type = draw(st.sampled_from(FUZZ_SEEDS))
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x10]))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data), content_type


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_mutated())
def test_mutated_images_only_ever_decode_or_raise_ingest_errors(case):
    _assert_decoded_or_refused(*case)


@pytest.mark.parametrize("seed_index", range(len(FUZZ_SEEDS)))
def test_every_prefix_of_a_seed_decodes_or_is_refused(seed_index):
    body, content_type = FUZZ_SEEDS[seed_index]
    for cut in range(0, len(body), max(len(body) // 60, 1)):
        _assert_decoded_or_refused(body[:cut], content_type)
