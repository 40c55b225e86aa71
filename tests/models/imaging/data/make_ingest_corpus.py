"""Builders for ingestion test images, and the committed corpus of tricky files they write.

Run ``.venv/bin/python -m tests.models.imaging.data.make_ingest_corpus`` to (re)write
``tests/models/imaging/data/ingest_corpus/`` and its ``manifest.json``: one entry per file with the content type it is
sent with, optional non-default limits, and the expected outcome (``{"ok": {"width", "height"}}`` or
``{"error": code}``) with the reason. The output is deterministic (fixed UIDs, seeded noise), so a re-run only
changes files whose recipe changed. tests/models/imaging/test_decode.py walks the manifest; it imports the builders
below for its own synthetic cases.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

CORPUS_DIR = Path(__file__).resolve().parent / "ingest_corpus"
UID_ROOT = "1.2.826.0.1.3680043.8.498.7410"  # fixed UIDs keep the corpus byte-stable


# ---- DICOM ----------------------------------------------------------------------------------------------


def dicom_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    transfer_syntax: str = uid.ExplicitVRLittleEndian,
    pixel_bytes: bytes | None = None,
    rows: int | None = None,
    columns: int | None = None,
    samples: int = 1,
    **elements,
) -> Dataset:
    """A Digital X-Ray (for presentation) dataset around `pixels` ([H, W] or [H, W, 3] stored values).

    `pixel_bytes` replaces the Pixel Data value (encapsulated or hostile data); `rows`/`columns` override the
    header's size; every other keyword is set as a DICOM element by keyword (order of setting is irrelevant)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.1"
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = f"{UID_ROOT}.1"
    ds.StudyInstanceUID = f"{UID_ROOT}.2"
    ds.SeriesInstanceUID = f"{UID_ROOT}.3"
    ds.Modality = "DX"
    ds.PatientName = "Synthetic^Phantom"  # not a person: the tests check that UIDs, not names, come back
    if pixels is not None:
        rows = pixels.shape[0] if rows is None else rows
        columns = pixels.shape[1] if columns is None else columns
        samples = pixels.shape[2] if pixels.ndim == 3 else samples
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = samples
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_allocated if bits_stored is None else bits_stored
    ds.HighBit = max(ds.BitsStored - 1, 0)
    ds.PixelRepresentation = int(signed)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if pixel_bytes is None:
        dtype = {8: "u1", 16: "u2", 32: "u4"}[bits_allocated]
        if signed:
            dtype = dtype.replace("u", "i")
        pixel_bytes = np.ascontiguousarray(pixels).astype("<" + dtype).tobytes()
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OB" if bits_allocated <= 8 or uid.UID(transfer_syntax).is_compressed else "OW"
    return ds


def dicom_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    """Part 10 bytes (128-byte preamble + DICM + File Meta), or a raw dataset in the dataset's encoding."""
    out = io.BytesIO()
    syntax = uid.UID(ds.file_meta.TransferSyntaxUID)
    if preamble and syntax.is_private:
        pydicom.dcmwrite(out, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    elif preamble:
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
    else:
        bare = Dataset(ds)  # without the File Meta group
        bare.file_meta = FileMetaDataset()
        pydicom.dcmwrite(out, bare, implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian)
    return out.getvalue()


def radiograph(height: int = 48, width: int = 64, bits: int = 12, seed: int = 0) -> np.ndarray:
    """Smooth gradient + noise in [0, 2**bits): a stand-in for a chest X-ray's stored values."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    top = 2**bits - 1
    base = (xx / max(width - 1, 1) * 0.6 + yy / max(height - 1, 1) * 0.3) * top
    return np.clip(base + rng.normal(0, top * 0.02, base.shape), 0, top).astype(np.uint16)


def _j2k_header(width: int, height: int) -> bytes:
    """SOC + SIZ (ISO/IEC 15444-1 A.5.1) for one 8-bit component, followed by filler: a lying codestream."""
    siz = struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, width, height, 0, 0, 1) + bytes([7, 1, 1])
    return b"\xff\x4f\xff\x51" + struct.pack(">H", len(siz) + 2) + siz + b"\x00" * 64


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real 8×8 baseline JPEG whose SOF0 is patched to declare width × height."""
    out = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _patch_explicit_length(data: bytes, tag: tuple[int, int], vr: bytes, new_length: int) -> bytes:
    """Overwrite the declared length of the first explicit-VR LE element `tag` (short or long form)."""
    marker = struct.pack("<HH", *tag) + vr
    at = data.find(marker)
    assert at > 0, f"{tag} not found"
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return data[: at + 8] + struct.pack("<I", new_length) + data[at + 12 :]
    return data[: at + 6] + struct.pack("<H", new_length) + data[at + 8 :]


# ---- PNG / JPEG -------------------------------------------------------------------------------------------


def png_bytes(image: Image.Image, **save_args) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **save_args)
    return out.getvalue()


def jpeg_bytes(image: Image.Image, **save_args) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **save_args)
    return out.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width × height (8-bit gray) with one tiny IDAT: a decompression bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def exif_jpeg(orientation: int, width: int = 40, height: int = 20, block: int = 6) -> bytes:
    """A dark JPEG with a bright block at the STORED top-left and the given EXIF orientation."""
    stored = np.full((height, width), 20, np.uint8)
    stored[:block, :block] = 235
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(Image.fromarray(stored), quality=95, exif=exif.tobytes())


# ---- the corpus ---------------------------------------------------------------------------------------------


def _corpus() -> list[tuple[str, bytes, str | None, dict, dict | None, str]]:
    """(file name, bytes, content type, expected, limits or None, why)."""
    gray12 = radiograph()
    ok = lambda w, h: {"ok": {"width": w, "height": h}}  # noqa: E731
    err = lambda code: {"error": code}  # noqa: E731
    entries = []

    def add(name, data, content_type, expected, why, limits=None):
        entries.append((name, data, content_type, expected, limits, why))

    # DICOM that must decode
    add(
        "dx_mono2_window.dcm",
        dicom_bytes(dicom_dataset(gray12, bits_stored=12, WindowCenter=2048, WindowWidth=4096)),
        "application/dicom",
        ok(64, 48),
        "12-bit MONOCHROME2 with a window",
    )
    add(
        "dx_mono1.dcm",
        dicom_bytes(dicom_dataset(4095 - gray12, bits_stored=12, photometric="MONOCHROME1")),
        "application/dicom",
        ok(64, 48),
        "MONOCHROME1, inverted on ingestion",
    )
    garbage_high = gray12 | np.uint16(0xF000)
    add(
        "dx_12bit_garbage_high_bits.dcm",
        dicom_bytes(dicom_dataset(garbage_high, bits_stored=12)),
        "application/dicom",
        ok(64, 48),
        "12 bits stored in 16 with the 4 unused high bits set",
    )
    add(
        "dx_10bit_signed_rescale.dcm",
        dicom_bytes(
            dicom_dataset(
                gray12.astype(np.int16) // 4 - 512, bits_stored=10, signed=True, RescaleSlope=2, RescaleIntercept=-100
            )
        ),
        "application/dicom",
        ok(64, 48),
        "signed 10-bit pixels with Rescale Slope/Intercept",
    )
    padded = gray12.copy()
    padded[:, :8] = 0
    add(
        "dx_padding_range.dcm",
        dicom_bytes(dicom_dataset(padded, bits_stored=12, PixelPaddingValue=0, PixelPaddingRangeLimit=3)),
        "application/dicom",
        ok(64, 48),
        "Pixel Padding Value with Range Limit",
    )
    add(
        "dx_window_width_zero.dcm",
        dicom_bytes(dicom_dataset(gray12, bits_stored=12, WindowCenter=100, WindowWidth=0)),
        "application/dicom",
        ok(64, 48),
        "unusable window (width 0): min–max instead",
    )
    add(
        "dx_raw_implicit_no_preamble.dcm",
        dicom_bytes(dicom_dataset(gray12, bits_stored=12, transfer_syntax=uid.ImplicitVRLittleEndian), preamble=False),
        None,
        ok(64, 48),
        "raw Implicit VR LE dataset without preamble or File Meta, sniffed",
    )
    add(
        "dx_big_endian.dcm",
        dicom_bytes(dicom_dataset(gray12, bits_stored=12, transfer_syntax=uid.ExplicitVRBigEndian)),
        "application/dicom",
        ok(64, 48),
        "Explicit VR Big Endian",
    )
    add(
        "dx_deflated.dcm",
        dicom_bytes(dicom_dataset(gray12, bits_stored=12, transfer_syntax=uid.DeflatedExplicitVRLittleEndian)),
        "application/dicom",
        ok(64, 48),
        "Deflated Explicit VR LE within the inflate budget",
    )
    add(
        "dx_rle.dcm",
        dicom_bytes(_compressed(dicom_dataset(gray12, bits_stored=12), uid.RLELossless)),
        "application/dicom; charset=binary",
        ok(64, 48),
        "RLE Lossless; Content-Type parameters ignored",
    )
    add(
        "dx_jpeg2000_lossless.dcm",
        dicom_bytes(_compressed(dicom_dataset(gray12, bits_stored=12), uid.JPEG2000Lossless)),
        "application/dicom",
        ok(64, 48),
        "JPEG 2000 lossless through pylibjpeg-openjpeg",
    )
    rgb = np.stack([gray12 >> 4, (gray12 >> 5) + 10, 255 - (gray12 >> 4)], axis=-1).astype(np.uint8)
    add(
        "sc_rgb.dcm",
        dicom_bytes(dicom_dataset(rgb, photometric="RGB", bits_allocated=8)),
        "application/dicom",
        ok(64, 48),
        "RGB → luminance",
    )
    from pydicom.pixels.processing import convert_color_space

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    add(
        "sc_ybr_full.dcm",
        dicom_bytes(dicom_dataset(ybr, photometric="YBR_FULL", bits_allocated=8)),
        "application/dicom",
        ok(64, 48),
        "native YBR_FULL → RGB → luminance",
    )
    indices = (gray12 >> 4).astype(np.uint8)
    ramp = np.arange(256, dtype=np.uint16) * 257
    add(
        "sc_palette_colour.dcm",
        dicom_bytes(
            dicom_dataset(
                indices,
                photometric="PALETTE COLOR",
                bits_allocated=8,
                RedPaletteColorLookupTableDescriptor=[256, 0, 16],
                GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
                BluePaletteColorLookupTableDescriptor=[256, 0, 16],
                RedPaletteColorLookupTableData=ramp.tobytes(),
                GreenPaletteColorLookupTableData=(65535 - ramp).tobytes(),
                BluePaletteColorLookupTableData=ramp.tobytes(),
            )
        ),
        "application/dicom",
        ok(64, 48),
        "PALETTE COLOR with 16-bit LUTs",
    )

    # DICOM that must be refused
    whole = dicom_bytes(dicom_dataset(gray12, bits_stored=12))
    add("truncated_in_pixel_data.dcm", whole[:-1000], "application/dicom", err("bad_image"), "Pixel Data cut short")
    add(
        "truncated_in_header.dcm",
        whole[:300],
        "application/dicom",
        err("bad_image"),
        "cut inside the header: no Pixel Data left",
    )
    add(
        "huge_declared_name_length.dcm",
        _patch_explicit_length(whole, (0x0010, 0x0010), b"PN", 0xFFF0),
        "application/dicom",
        err("bad_image"),
        "Patient Name declares 65520 bytes (swallows the rest)",
    )
    add(
        "huge_declared_pixel_length.dcm",
        _patch_explicit_length(whole, (0x7FE0, 0x0010), b"OW", 0x7FFFFFF0),
        "application/dicom",
        err("bad_image"),
        "Pixel Data declares 2 GiB in a 7 KB file",
    )
    add(
        "element_over_limit.dcm",
        whole,
        "application/dicom",
        err("too_large"),
        "Pixel Data (6144 bytes) over a 4096-byte element limit",
        {"max_dicom_element_bytes": 4096},
    )
    zeros = dicom_dataset(gray12, bits_stored=12, transfer_syntax=uid.DeflatedExplicitVRLittleEndian)
    zeros.add_new(0x00091010, "OB", b"\x00" * (4 * 2**20))
    zeros.add_new(0x00090010, "LO", "NORMGATE TEST")
    add(
        "deflate_bomb.dcm",
        dicom_bytes(zeros),
        "application/dicom",
        err("too_large"),
        "Deflated dataset that inflates to 4 MiB against a 1 MiB budget",
        {"max_dicom_element_bytes": 2**20},
    )
    add(
        "rows_columns_bomb.dcm",
        dicom_bytes(dicom_dataset(None, rows=65535, columns=65535, pixel_bytes=b"\0" * 8)),
        "application/dicom",
        err("too_large"),
        "Rows × Columns = 4.3 G pixels with 8 bytes of pixel data",
    )
    add(
        "j2k_codestream_bomb.dcm",
        dicom_bytes(
            dicom_dataset(
                None,
                rows=64,
                columns=64,
                bits_allocated=8,
                transfer_syntax=uid.JPEG2000Lossless,
                pixel_bytes=encapsulate([_j2k_header(60000, 60000)]),
            )
        ),
        "application/dicom",
        err("bad_image"),
        "64×64 header, JPEG 2000 SIZ declares 60000×60000",
    )
    add(
        "jpeg_sof_bomb.dcm",
        dicom_bytes(
            dicom_dataset(
                None,
                rows=64,
                columns=64,
                bits_allocated=8,
                transfer_syntax=uid.JPEGBaseline8Bit,
                pixel_bytes=encapsulate([_jpeg_with_size(50000, 50000)]),
            )
        ),
        "application/dicom",
        err("bad_image"),
        "64×64 header, JPEG SOF declares 50000×50000",
    )
    # pydicom 3.0.2 will not write a standard UID it does not know: write a private UID of the same length
    # (23 characters) and swap the bytes for JPEG XL Lossless (1.2.840.10008.1.2.4.110).
    placeholder = "1.2.826.0.1.3680043.9.1"
    jpegxl = dicom_bytes(
        dicom_dataset(
            None,
            rows=8,
            columns=8,
            bits_allocated=8,
            transfer_syntax=placeholder,
            pixel_bytes=encapsulate([b"\xff\x0a" + b"\x00" * 30]),
        )
    )
    add(
        "jpegxl_transfer_syntax.dcm",
        jpegxl.replace(placeholder.encode(), b"1.2.840.10008.1.2.4.110"),
        "application/dicom",
        err("unsupported_media_type"),
        "JPEG XL Lossless: no installed decoder",
    )
    add(
        "private_transfer_syntax.dcm",
        dicom_bytes(
            dicom_dataset(
                None,
                rows=8,
                columns=8,
                bits_allocated=8,
                transfer_syntax=f"{UID_ROOT}.99",
                pixel_bytes=encapsulate([b"\x00" * 32]),
            )
        ),
        "application/dicom",
        err("unsupported_media_type"),
        "a private compressed transfer syntax",
    )
    add(
        "multi_frame.dcm",
        dicom_bytes(
            dicom_dataset(
                None, rows=48, columns=64, NumberOfFrames=2, pixel_bytes=np.concatenate([gray12, gray12]).tobytes()
            )
        ),
        "application/dicom",
        err("bad_parameter"),
        "Number of Frames 2",
    )
    no_pixels = dicom_dataset(gray12, bits_stored=12)
    del no_pixels.PixelData
    add("no_pixel_data.dcm", dicom_bytes(no_pixels), "application/dicom", err("bad_image"), "no Pixel Data")
    float_pixels = dicom_dataset(None, rows=4, columns=4, bits_allocated=32, pixel_bytes=b"\0" * 64)
    del float_pixels.PixelData
    float_pixels.FloatPixelData = np.linspace(0, 1, 16, dtype="<f4").tobytes()
    add(
        "float_pixel_data.dcm",
        dicom_bytes(float_pixels),
        "application/dicom",
        err("unsupported_media_type"),
        "Float Pixel Data (7FE0,0008) instead of Pixel Data",
    )
    add(
        "bits_stored_zero.dcm",
        dicom_bytes(dicom_dataset(gray12, bits_stored=0)),
        "application/dicom",
        err("bad_image"),
        "Bits Stored 0",
    )
    add(
        "rescale_slope_nan.dcm",
        dicom_bytes(dicom_dataset(gray12, bits_stored=12, RescaleSlope="NaN", RescaleIntercept=0)),
        "application/dicom",
        err("bad_image"),
        "Rescale Slope NaN",
    )
    add(
        "voi_lut_too_short.dcm",
        dicom_bytes(_with_voi_lut(dicom_dataset(gray12, bits_stored=12), [4096, 0, 12], list(range(16)))),
        "application/dicom",
        err("bad_image"),
        "VOI LUT declares 4096 entries, holds 16",
    )
    add(
        "photometric_argb.dcm",
        dicom_bytes(
            dicom_dataset(
                None, rows=4, columns=4, samples=4, photometric="ARGB", bits_allocated=8, pixel_bytes=b"\x80" * 64
            )
        ),
        "application/dicom",
        err("unsupported_media_type"),
        "retired ARGB colour model",
    )
    add(
        "samples_contradict_photometric.dcm",
        dicom_bytes(
            dicom_dataset(
                None,
                rows=4,
                columns=4,
                samples=3,
                photometric="MONOCHROME2",
                bits_allocated=8,
                pixel_bytes=b"\x80" * 48,
            )
        ),
        "application/dicom",
        err("bad_image"),
        "3 samples per pixel but MONOCHROME2",
    )
    wrong_vr = _patch_rows_vr(whole)
    add(
        "rows_wrong_vr_two_values.dcm",
        wrong_vr,
        "application/dicom",
        err("bad_image"),
        "Rows (US) with length 4: two values where one belongs",
    )
    add(
        "deep_sequence_nesting.dcm",
        _deeply_nested(whole, depth=3000),
        "application/dicom",
        err("bad_image"),
        "3000 nested undefined-length sequences before Pixel Data",
    )
    add(
        "dicm_then_garbage.dcm",
        b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4,
        "application/dicom",
        err("bad_image"),
        "preamble and DICM followed by noise",
    )

    # PNG / JPEG that must decode
    add(
        "png_16bit_gray.png",
        png_bytes(Image.fromarray((gray12 * 16).astype(np.uint16))),
        "image/png",
        ok(64, 48),
        "16-bit grayscale PNG",
    )
    add(
        "png_2bit_gray.png",
        png_bytes(Image.fromarray((gray12 >> 10).astype(np.uint8) * 85), bits=2),
        "image/png",
        ok(64, 48),
        "2-bit grayscale PNG",
    )
    add(
        "png_palette_trns.png",
        png_bytes(Image.fromarray(indices).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), transparency=0),
        "image/png",
        ok(64, 48),
        "palette PNG with a transparent index",
    )
    add(
        "png_rgba.png",
        png_bytes(Image.fromarray(np.dstack([rgb, np.full(gray12.shape, 200, np.uint8)]))),
        "image/png",
        ok(64, 48),
        "RGBA PNG, alpha composited over black",
    )
    add(
        "jpeg_exif_orientation_6.jpg",
        exif_jpeg(6),
        "image/jpeg",
        ok(20, 40),
        "EXIF orientation 6: stored 40×20, displayed 20×40",
    )
    add("jpeg_cmyk.jpg", jpeg_bytes(Image.fromarray(rgb).convert("CMYK")), "image/jpeg", ok(64, 48), "CMYK JPEG")
    add(
        "png_octet_stream.png",
        png_bytes(Image.fromarray(indices)),
        "application/octet-stream",
        ok(64, 48),
        "octet-stream is sniffed",
    )

    # PNG / JPEG / other that must be refused
    good_png = png_bytes(Image.fromarray(indices))
    add("png_truncated.png", good_png[: len(good_png) // 2], "image/png", err("bad_image"), "PNG cut in IDAT")
    add(
        "png_bad_ihdr_crc.png",
        good_png[:29] + b"\x00\x00\x00\x00" + good_png[33:],
        "image/png",
        err("bad_image"),
        "IHDR CRC zeroed",
    )
    add(
        "png_bomb_header.png",
        png_declaring(100_000, 100_000),
        "image/png",
        err("too_large"),
        "IHDR declares 100000×100000",
    )
    add("png_zero_width.png", png_declaring(0, 10), "image/png", err("bad_image"), "IHDR declares width 0")
    frames = [Image.fromarray(indices), Image.fromarray(255 - indices)]
    add(
        "png_animated.png",
        png_bytes(frames[0], save_all=True, append_images=frames[1:]),
        "image/png",
        err("bad_parameter"),
        "APNG with 2 frames",
    )
    good_jpeg = jpeg_bytes(Image.fromarray(indices))
    add("jpeg_truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "image/jpeg", err("bad_image"), "JPEG cut in scan")
    add(
        "jpeg_bomb_header.jpg",
        _jpeg_with_size(65500, 65500),
        "image/jpeg",
        err("too_large"),
        "SOF0 declares 65500×65500",
    )
    add(
        "png_sent_as_jpeg.png",
        good_png,
        "image/jpeg",
        err("unsupported_media_type"),
        "declared type contradicts the bytes",
    )
    add("garbage.bin", bytes(range(7, 250, 3)) * 8, None, err("bad_image"), "no known magic bytes")
    add(
        "garbage_declared_png.bin",
        bytes(range(7, 250, 3)) * 8,
        "image/png",
        err("bad_image"),
        "declared PNG, not a PNG",
    )
    add(
        "gif.gif",
        b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00;",
        "image/gif",
        err("unsupported_media_type"),
        "GIF is not an accepted type",
    )
    add("empty.bin", b"", "image/png", err("bad_image"), "empty body")
    add(
        "too_big_body.png",
        good_png,
        "image/png",
        err("too_large"),
        "body over a 100-byte limit",
        {"max_body_bytes": 100},
    )
    return entries


def _compressed(ds: Dataset, syntax: str) -> Dataset:
    ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax != uid.RLELossless else "", generate_instance_uid=False)
    return ds


def _with_voi_lut(ds: Dataset, descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]
    return ds


def _patch_rows_vr(data: bytes) -> bytes:
    """Rows (0028,0010) US, length 2 → length 4 with a second value borrowed from the next bytes' space."""
    marker = b"\x28\x00\x10\x00US\x02\x00"
    at = data.find(marker)
    value = data[at + 8 : at + 10]
    return data[:at] + b"\x28\x00\x10\x00US\x04\x00" + value + b"\x07\x00" + data[at + 10 :]


def _deeply_nested(data: bytes, depth: int) -> bytes:
    """Insert a private sequence (0029,1010) nested `depth` times (undefined lengths) before (7FE0,0010)."""
    opening = b"\x29\x00\x10\x10SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    creator = b"\x29\x00\x10\x00LO\x0e\x00NORMGATE TEST "
    at = data.find(b"\xe0\x7f\x10\x00")
    return data[:at] + creator + opening * depth + closing * depth + data[at:]


def write_corpus(folder: Path = CORPUS_DIR) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, data, content_type, expected, limits, why in _corpus():
        (folder / name).write_bytes(data)
        entry = {"file": name, "content_type": content_type, "expected": expected, "why": why}
        if limits:
            entry["limits"] = limits
        manifest.append(entry)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    written = write_corpus()
    total = sum((CORPUS_DIR / e["file"]).stat().st_size for e in written)
    print(f"wrote {len(written)} files ({total} bytes) to {CORPUS_DIR}")
