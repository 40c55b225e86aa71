"""Multi-frame DICOM (cines): every frame decoded with its functional groups' values, limits on the frame count,
and a Number of Frames that does not match the pixel data refused with a sentence that says so."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

from models.imaging import DecodeLimits, decode_image, to_display_png
from models.imaging.decode import inspect_upload
from models.imaging.errors import BadImage, TooLarge, UnsupportedImage
from tests.service.dicom_factory import cine_frames, enhanced_mr, mr_series

DICOM = "application/dicom"


def test_enhanced_mr_decodes_every_frame_with_the_shared_window():
    frames = cine_frames(5, 24, 32, seed=1)
    decoded = decode_image(enhanced_mr(frames), DICOM, multi_frame=True)
    assert decoded.number_of_frames == 5 and decoded.pixels.shape == (5, 24, 32)
    assert (decoded.width, decoded.height) == (32, 24) and len(decoded.frames) == 5
    # Window 2048 / 4096 (LINEAR, PS3.3 C.11.2.1.2.1): (v − 2047.5) / 4095 + 0.5 = v / 4095 exactly.
    np.testing.assert_allclose(decoded.pixels, frames / 4095.0, atol=1e-6)
    assert decoded.window == (2048.0, 4096.0)
    assert (decoded.modality, decoded.series_description, decoded.body_part_examined) == ("MR", "4CH cine", "HEART")


def test_each_frame_takes_its_own_per_frame_window():
    frames = cine_frames(3, 16, 16, seed=2)
    windows = [(2048.0, 4096.0), (1000.0, 1000.0), (3000.0, 2000.0)]
    decoded = decode_image(enhanced_mr(frames, frame_windows=windows), DICOM, multi_frame=True)
    for index, (center, width) in enumerate(windows):
        x = frames[index].astype(np.float64)
        expected = np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
        np.testing.assert_allclose(decoded.pixels[index], expected, atol=1e-6)


def test_without_a_window_min_max_spans_the_whole_cine():
    frames = cine_frames(4, 16, 16, seed=3)
    frames[2] //= 2  # a darker frame stays darker: one range for all frames, not one per frame
    decoded = decode_image(enhanced_mr(frames, window=None), DICOM, multi_frame=True)
    low, high = float(frames.min()), float(frames.max())
    np.testing.assert_allclose(decoded.pixels, (frames - low) / (high - low), atol=1e-6)


def test_classic_instances_decode_as_the_enhanced_frames_do():
    frames = cine_frames(3, 20, 20, seed=4)
    cine = decode_image(enhanced_mr(frames), DICOM, multi_frame=True)
    for index, body in enumerate(mr_series(frames)):
        single = decode_image(body, DICOM)
        assert single.pixels.shape == (20, 20) and single.number_of_frames == 1
        np.testing.assert_allclose(single.pixels, cine.pixels[index], atol=1e-6)


def test_multi_frame_is_refused_where_one_frame_is_expected_and_over_the_frame_limit():
    body = enhanced_mr(cine_frames(4, 16, 16))
    with pytest.raises(UnsupportedImage, match="multi-frame DICOM is not supported here"):
        decode_image(body, DICOM)
    limits = DecodeLimits(max_frames=3)
    for check in (
        lambda: inspect_upload(body, DICOM, limits),
        lambda: decode_image(body, DICOM, limits, multi_frame=True),
    ):
        with pytest.raises(TooLarge, match="declares 4 frames; at most 3 are assessed per instance"):
            check()
    assert decode_image(body, DICOM, DecodeLimits(max_frames=4), multi_frame=True).pixels.shape[0] == 4


@pytest.mark.parametrize(
    ("declared", "stored", "message"),
    [
        (6, 4, r"holds 4096 bytes \(4 frames of 16×32\), but Number of Frames is 6 \(6144 bytes\)"),
        (2, 4, r"holds 4096 bytes \(4 frames of 16×32\), but Number of Frames is 2 \(2048 bytes\)"),
        (3, 2.5, r"holds 2560 bytes \(2 frames and a part of one of 16×32\), but Number of Frames is 3 \(3072 bytes\)"),
    ],
)
def test_number_of_frames_that_does_not_match_the_pixel_data_is_refused(declared, stored, message):
    frames = cine_frames(4, 32, 16)
    data = np.ascontiguousarray(frames).tobytes()[: int(stored * 32 * 16 * 2)]
    body = enhanced_mr(frames, number_of_frames=declared, pixel_data=data)
    with pytest.raises(BadImage, match=message + ": Number of Frames does not match the pixel data"):
        decode_image(body, DICOM, multi_frame=True)


def test_number_of_frames_zero_decodes_nothing():
    body = enhanced_mr(cine_frames(2, 16, 16), number_of_frames=0)
    decoded = decode_image(body, DICOM, multi_frame=True)
    assert decoded.number_of_frames == 0 and decoded.pixels.size == 0 and decoded.frames == []


def _reencoded(body: bytes, syntax, frames: list[bytes]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(body))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_compressed_frames_of_another_size_or_count_are_refused():
    import openjpeg

    def j2k(frame: np.ndarray) -> bytes:
        return bytes(openjpeg.encode(frame, bits_stored=12, photometric_interpretation=2, use_mct=False))

    frames = cine_frames(3, 32, 48, seed=5)
    body = enhanced_mr(frames)
    encoded = [j2k(f) for f in frames]
    good = decode_image(_reencoded(body, JPEG2000Lossless, encoded), DICOM, multi_frame=True)
    np.testing.assert_allclose(good.pixels, frames / 4095.0, atol=1e-6)
    odd = [*encoded[:2], j2k(cine_frames(1, 64, 48)[0])]
    with pytest.raises(BadImage, match="compressed frame 3 of 3 declares 48×64 but Rows × Columns say 48×32"):
        decode_image(_reencoded(body, JPEG2000Lossless, odd), DICOM, multi_frame=True)
    with pytest.raises(BadImage, match="holds 2 frames, but Number of Frames is 3"):
        decode_image(_reencoded(body, RLELossless, encoded[:2]), DICOM, multi_frame=True)


def test_display_png_stacks_the_frames_top_to_bottom():
    from PIL import Image

    frames = cine_frames(3, 10, 12, seed=6)
    decoded = decode_image(enhanced_mr(frames), DICOM, multi_frame=True)
    sprite = np.asarray(Image.open(io.BytesIO(to_display_png(decoded))))
    assert sprite.shape == (30, 12)
    np.testing.assert_array_equal(sprite[10:20], np.rint(decoded.pixels[1] * 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("description", "body_part"), [("SSFP 4ch retro", "HEART"), (None, None), ("Ciné 4CH", "CHEST")]
)
def test_the_header_walk_reads_the_routing_attributes_the_decoder_reads(description, body_part):
    body = enhanced_mr(cine_frames(2, 16, 16), series_description=description, body_part=body_part)
    header = inspect_upload(body, DICOM)
    decoded = decode_image(body, DICOM, multi_frame=True)
    assert header is not None and header.frames == 2
    assert (header.modality, header.series_description, header.body_part_examined, header.view_position) == (
        decoded.modality,
        decoded.series_description,
        decoded.body_part_examined,
        decoded.view_position,
    )
    assert header.modality == "MR" and header.series_description == description
