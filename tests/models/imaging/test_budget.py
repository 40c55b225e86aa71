"""The decode budget (models/imaging/budget.py): header sizes read without decoding, the estimate refused before
any pixel is decoded, PNG chunk caps, the JPEG scan ceiling, and the estimate against a measured peak.

Expected decoded bytes are computed here from how each image was built (width × height × samples × bytes), not
from the code under test.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import Decoder
from pydicom.sequence import Sequence

from models.imaging import DecodeLimits, TooLarge, decode_image
from models.imaging.budget import (
    FIXED_OVERHEAD_BYTES,
    WORKING_FACTORS,
    DecodeBudgetExceeded,
    check_jpeg_scans,
    check_png_chunks,
    read_header,
)
from tests.helpers import REPO
from tests.models.imaging.data.make_ingest_corpus import (
    dicom_bytes,
    dicom_dataset,
    jpeg_bytes,
    png_bytes,
    png_chunk,
    png_declaring,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _raw_png(width: int, height: int, depth: int, colour_type: int, extra_chunks: bytes = b"") -> bytes:
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row_bytes = (width * samples * depth + 7) // 8
    raw = b"".join(b"\0" + b"\x10" * row_bytes for _ in range(height))
    chunks = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
    if colour_type == 3:
        chunks += png_chunk(b"PLTE", bytes(range(48)))
    return SIGNATURE + chunks + extra_chunks + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("depth", "colour_type", "bytes_per_pixel", "layout"),
    [
        (1, 0, 1, "png-gray"),
        (8, 0, 1, "png-gray"),
        (16, 0, 2, "png-gray16"),
        (8, 2, 3, "png-rgb"),
        (16, 2, 6, "png-rgb16"),
        (4, 3, 1, "png-palette"),
        (8, 4, 2, "png-gray-alpha"),
        (16, 4, 4, "png-rgba"),
        (8, 6, 4, "png-rgba"),
        (16, 6, 8, "png-rgba16"),
    ],
)
def test_png_header_declares_its_decoded_bytes(depth, colour_type, bytes_per_pixel, layout):
    body = _raw_png(30, 20, depth, colour_type)
    header = read_header(body)
    assert header is not None and (header.kind, header.width, header.height) == ("png", 30, 20)
    assert header.decoded_bytes == 30 * 20 * bytes_per_pixel
    assert header.layout == layout
    assert (
        header.estimated_peak_bytes == int(30 * 20 * bytes_per_pixel * WORKING_FACTORS[layout]) + FIXED_OVERHEAD_BYTES
    )
    assert decode_image(body, "image/png").width == 30  # and the decoder takes it


def test_jpeg_header_names_components_and_progressive_mode():
    gray = Image.fromarray(np.full((24, 40), 90, np.uint8))
    colour = Image.fromarray(np.full((24, 40, 3), 90, np.uint8))
    cases = [
        (jpeg_bytes(gray), 1, "jpeg-gray"),
        (jpeg_bytes(colour), 3, "jpeg-colour"),
        (jpeg_bytes(gray, progressive=True), 1, "jpeg-gray-progressive"),
        (jpeg_bytes(colour, progressive=True), 3, "jpeg-colour-progressive"),
        (jpeg_bytes(colour.convert("CMYK")), 4, "jpeg-colour"),
    ]
    for body, components, layout in cases:
        header = read_header(body)
        assert header is not None and (header.width, header.height) == (40, 24)
        assert header.decoded_bytes == 40 * 24 * components and header.layout == layout


def test_dicom_header_multiplies_rows_columns_samples_frames_and_bits():
    mono = dicom_bytes(dicom_dataset(np.zeros((48, 64), np.uint16), bits_stored=12))
    header = read_header(mono)
    assert header is not None and (header.width, header.height, header.frames) == (64, 48, 1)
    assert header.decoded_bytes == 64 * 48 * 2 and header.layout == "dicom-mono16"

    frames = dicom_bytes(
        dicom_dataset(None, rows=48, columns=64, NumberOfFrames=3, pixel_bytes=b"\0" * (3 * 48 * 64 * 2))
    )
    assert read_header(frames).decoded_bytes == 3 * 48 * 64 * 2

    rgb = dicom_bytes(dicom_dataset(np.zeros((10, 12, 3), np.uint8), photometric="RGB", bits_allocated=8))
    header = read_header(rgb)
    assert header.decoded_bytes == 10 * 12 * 3 and header.layout == "dicom-colour8"


@pytest.mark.parametrize(
    "transfer_syntax", [uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian, uid.ExplicitVRLittleEndian]
)
def test_dicom_header_walks_undefined_length_sequences_in_every_native_encoding(transfer_syntax):
    """A nested undefined-length sequence before group 0028 whose items hold a decoy Rows/Columns."""
    pixels = np.zeros((48, 64), np.uint16)
    ds = dicom_dataset(pixels, transfer_syntax=transfer_syntax)
    decoy = Dataset()
    decoy.Rows, decoy.Columns = 9999, 9999
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3"
    inner.ReferencedImageSequence = Sequence([decoy])
    ds.ReferencedSeriesSequence = Sequence([inner, Dataset()])
    for element in (ds["ReferencedSeriesSequence"], inner["ReferencedImageSequence"]):
        element.is_undefined_length = True
    body = dicom_bytes(ds)
    header = read_header(body)
    assert header is not None and (header.width, header.height) == (64, 48)
    assert decode_image(body, "application/dicom").width == 64


def test_read_header_answers_none_rather_than_guess():
    deflated = dicom_bytes(
        dicom_dataset(np.zeros((8, 8), np.uint16), transfer_syntax=uid.DeflatedExplicitVRLittleEndian)
    )
    for body in (b"", b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff" + b"\0" * 10, deflated):
        assert read_header(body) is None


def test_an_image_over_the_budget_is_refused_before_any_pixel_is_decoded(monkeypatch):
    def no_load(self):  # pragma: no cover - reaching it is the failure
        raise AssertionError("pixels were decoded")

    def no_decode(*args, **kwargs):  # pragma: no cover
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    monkeypatch.setattr(Decoder, "as_array", no_decode)
    png = png_declaring(6000, 5000)  # 30 M pixels of 8-bit gray: under max_pixels, 300 MB estimated
    expected = int(6000 * 5000 * WORKING_FACTORS["png-gray"]) + FIXED_OVERHEAD_BYTES
    limits = DecodeLimits(max_decode_bytes=expected - 1)
    started = time.perf_counter()
    with pytest.raises(DecodeBudgetExceeded) as caught:
        decode_image(png, "image/png", limits)
    assert time.perf_counter() - started < 1.0
    assert caught.value.code == "too_large" and caught.value.estimated_bytes == expected
    assert "6000×5000" in caught.value.detail and "limit is" in caught.value.detail

    dicom = dicom_bytes(dicom_dataset(np.zeros((48, 64), np.uint16)))
    estimate = int(48 * 64 * 2 * WORKING_FACTORS["dicom-mono16"]) + FIXED_OVERHEAD_BYTES
    with pytest.raises(DecodeBudgetExceeded) as caught:
        decode_image(dicom, "application/dicom", DecodeLimits(max_decode_bytes=estimate - 1))
    assert caught.value.estimated_bytes == estimate


def test_an_exif_transposition_adds_a_copy_of_the_decoded_image():
    from tests.models.imaging.data.make_ingest_corpus import exif_jpeg

    plain = int(40 * 20 * WORKING_FACTORS["jpeg-gray"]) + FIXED_OVERHEAD_BYTES
    with pytest.raises(DecodeBudgetExceeded) as caught:
        decode_image(exif_jpeg(6), "image/jpeg", DecodeLimits(max_decode_bytes=plain))
    assert caught.value.estimated_bytes == plain + 40 * 20  # Pillow's second 1-byte-per-pixel image
    assert decode_image(exif_jpeg(1), "image/jpeg", DecodeLimits(max_decode_bytes=plain)).width == 40


def test_png_chunk_caps_refuse_before_pillow_parses_the_chunks(monkeypatch):
    def no_open(*args, **kwargs):  # pragma: no cover
        raise AssertionError("Pillow parsed the file")

    empty_text = png_chunk(b"tEXt", b"")
    two_million = _raw_png(4, 4, 8, 0, extra_chunks=empty_text * 2_000_000)
    monkeypatch.setattr("models.imaging.decode._RASTER_PLUGIN", {"png": no_open, "jpeg": no_open})
    started = time.perf_counter()
    with pytest.raises(TooLarge) as caught:
        decode_image(two_million, "image/png", DecodeLimits(max_body_bytes=2**30))
    assert time.perf_counter() - started < 0.5
    assert "more than 256 ancillary" in caught.value.detail

    limits = DecodeLimits(max_png_chunks=10, max_png_ancillary_chunks=3, max_png_ancillary_bytes=100)
    check_png_chunks(_raw_png(4, 4, 8, 0, extra_chunks=png_chunk(b"tEXt", b"k\0v") * 3), limits)
    with pytest.raises(TooLarge, match="more than 3 ancillary"):
        check_png_chunks(_raw_png(4, 4, 8, 0, extra_chunks=png_chunk(b"tEXt", b"k\0v") * 4), limits)
    with pytest.raises(TooLarge, match="hold more than 100 bytes"):
        check_png_chunks(_raw_png(4, 4, 8, 0, extra_chunks=png_chunk(b"iTXt", b"x" * 101)), limits)
    many_idat = SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
    many_idat += png_chunk(b"IDAT", b"") * 10 + png_chunk(b"IEND", b"")
    with pytest.raises(TooLarge, match="more than 10 chunks"):
        check_png_chunks(many_idat, limits)


def test_png_chunk_walk_leaves_garbage_and_truncation_to_the_decoder():
    limits = DecodeLimits(max_png_ancillary_bytes=10)
    check_png_chunks(SIGNATURE + b"\xff" * 64, limits)  # an impossible length: not counted
    check_png_chunks(_raw_png(4, 4, 8, 0)[:-20], limits)  # cut in the middle of a chunk


def test_jpeg_scan_ceiling():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    progressive = jpeg_bytes(image, progressive=True)
    scans = progressive.count(b"\xff\xda")
    assert scans > 3  # libjpeg's progressive script writes ~10
    check_jpeg_scans(progressive, DecodeLimits())
    assert decode_image(progressive, "image/jpeg").width == 32
    with pytest.raises(TooLarge, match=f"{scans} scans; the limit is {scans - 1}"):
        decode_image(progressive, "image/jpeg", DecodeLimits(max_jpeg_scans=scans - 1))


def test_decoding_does_not_import_torch():
    """The service's decode worker processes run models.imaging.decode without torch (~550 MB less each)."""
    code = "import sys, models.imaging.decode, models.imaging.budget; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_MEASURE = textwrap.dedent(
    """
    import gc, json, sys
    from pathlib import Path
    from models.imaging import decode_image
    body = Path(sys.argv[1]).read_bytes()
    decode_image(Path(sys.argv[2]).read_bytes(), None)  # codec warm-up on a tiny image of the same kind
    gc.collect()
    status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    before = status("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")
    decoded = decode_image(body, None)
    print(json.dumps({"peak": status("VmHWM:") - before, "pixels": decoded.pixels.nbytes}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from /proc")
def test_the_estimate_covers_the_measured_peak(tmp_path):
    """Decoding in a fresh process (as the service's worker does) peaks under the estimate, whose other part is
    the server's copy of the float32 pixels (4 bytes per pixel) and their resize."""
    rows, cols = 1200, 1500
    y = np.linspace(0, 1, rows, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, cols, dtype=np.float32)[None, :]
    gray = (200 * (0.5 * y + 0.4 * x)).astype(np.uint8)
    padded = dicom_dataset((gray.astype(np.uint16) << 4), bits_stored=12, PixelPaddingValue=0)
    cases = {
        "png-rgba": (png_bytes(Image.fromarray(np.dstack([gray] * 4), "RGBA")), png_bytes(Image.new("RGBA", (4, 4)))),
        "jpeg-colour": (
            jpeg_bytes(Image.fromarray(np.dstack([gray] * 3))),
            jpeg_bytes(Image.new("RGB", (8, 8))),
        ),
        "dicom-mono16": (dicom_bytes(padded), dicom_bytes(dicom_dataset(np.zeros((4, 4), np.uint16)))),
    }
    for layout, (body, tiny) in cases.items():
        (tmp_path / "body").write_bytes(body)
        (tmp_path / "tiny").write_bytes(tiny)
        header = read_header(body)
        assert header is not None and header.layout == layout
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(tmp_path / "body"), str(tmp_path / "tiny")],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(out.stdout)
        server_side = measured["pixels"]  # the float32 copy the server receives
        assert measured["peak"] + server_side <= header.estimated_peak_bytes, (layout, measured)
        # and the estimate is not wildly loose: within 2.5× of what decoding plus the server's copy took
        assert header.estimated_peak_bytes <= 2.5 * (measured["peak"] + server_side), (layout, measured)


def test_budget_error_detail_names_image_and_limit():
    body = png_bytes(Image.fromarray(np.zeros((20, 30, 3), np.uint8)))
    with pytest.raises(DecodeBudgetExceeded) as caught:
        decode_image(body, "image/png", DecodeLimits(max_decode_bytes=1000))
    assert caught.value.detail == (
        "decoding this PNG image (30×20, 3 samples of 8 bits) would take about 8.0 MiB of memory; the limit is 0.0 MiB"
    )
    assert isinstance(caught.value, TooLarge)


def test_read_header_is_cheap_on_a_hostile_dicom():
    """200 000 tiny elements before group 0028: the walk gives up after its element cap instead of parsing."""
    ds = dicom_dataset(np.zeros((8, 8), np.uint16))
    body = dicom_bytes(ds)
    at = body.index(b"\x28\x00")  # the first group 0028 element
    filler = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 0) * 200_000  # private (0009,0010) LO, empty
    started = time.perf_counter()
    assert read_header(body[:at] + filler + body[at:]) is None
    assert time.perf_counter() - started < 0.5
