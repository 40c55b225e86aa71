"""The decode pipeline's working factor: peak memory of decoding and preparing one image, per format, divided by
the image's decoded bytes (what its header declares: width × height × samples × bytes per sample).

``NORMGATE_MAX_DECODE_MB`` is checked against ``decoded bytes × factor`` before any pixel is decoded
(``models.imaging.budget``); this benchmark measures the factors that estimate uses. Every case runs in a fresh
process (``--case``): imports and a tiny warm-up decode of the same kind first (codec tables, lazy imports), the
body read from a file, then the peak-RSS mark is reset (``/proc/self/clear_refs``, 5) and the pipeline runs:

* ``decode``: ``models.imaging.decode_image`` (what the decode worker process does);
* ``prepare``: ``resize_unit`` + ``normalise`` of the decoded pixels to the model grid (what the server process
  does with the pixels it receives).

Reported per case: peak RSS above the starting point (``VmHWM`` − ``VmRSS`` before) for each stage and for both
in one process, and the factor = that peak ÷ decoded bytes. tracemalloc's peak (numpy and Python objects only;
Pillow's and pydicom codecs' own buffers are invisible to it) is shown next to it as a cross-check.

    .venv/bin/python benchmarks/decode_memory.py --size 4000x4000 --out benchmarks/results/decode_memory.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

CASES = {
    # name: (kind, description)
    "png-gray8": ("png", "8-bit grayscale PNG"),
    "png-gray16": ("png", "16-bit grayscale PNG"),
    "png-palette": ("png", "8-bit palette PNG"),
    "png-rgb8": ("png", "8-bit RGB PNG"),
    "png-rgba8": ("png", "8-bit RGBA PNG"),
    "png-gray-alpha8": ("png", "8-bit gray + alpha PNG"),
    "png-rgb16": ("png", "16-bit RGB PNG"),
    "png-rgba16": ("png", "16-bit RGBA PNG"),
    "jpeg-gray": ("jpeg", "baseline grayscale JPEG"),
    "jpeg-rgb": ("jpeg", "baseline YCbCr JPEG"),
    "jpeg-gray-progressive": ("jpeg", "progressive grayscale JPEG"),
    "jpeg-rgb-progressive": ("jpeg", "progressive YCbCr JPEG"),
    "jpeg-rgb-rotated": ("jpeg", "baseline YCbCr JPEG with EXIF orientation 6 (transposed on decoding)"),
    "dicom-mono16": ("dicom", "16-bit MONOCHROME2 DICOM, 12 bits stored (table look-up path)"),
    "dicom-mono16-padding": ("dicom", "16-bit MONOCHROME2 DICOM with Pixel Padding Value (per-pixel float64 path)"),
    "dicom-mono8": ("dicom", "8-bit MONOCHROME2 DICOM"),
    "dicom-mono32": ("dicom", "32-bit MONOCHROME2 DICOM (per-pixel float64 path)"),
    "dicom-rgb8": ("dicom", "8-bit RGB DICOM"),
    "dicom-rgb16": ("dicom", "16-bit RGB DICOM"),
    "dicom-palette8": ("dicom", "8-bit PALETTE COLOR DICOM, 16-bit LUTs"),
    "dicom-mono16-jpeg2000": ("dicom", "16-bit MONOCHROME2 DICOM, JPEG 2000 lossless"),
    "dicom-mono16-jpegls": ("dicom", "16-bit MONOCHROME2 DICOM, JPEG-LS lossless"),
    "dicom-mono16-rle": ("dicom", "16-bit MONOCHROME2 DICOM, RLE lossless"),
}


def _pattern(rows: int, cols: int, channels: int, bits: int):
    import numpy as np

    top = (1 << bits) - 1
    y = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, cols, dtype=np.float32)[None, :, None]
    c = np.linspace(0.2, 1.0, channels, dtype=np.float32)[None, None, :]
    image = (top * (0.5 * y + 0.4 * x) * c).astype(np.uint16 if bits > 8 else np.uint8)
    return image[..., 0] if channels == 1 else image


def make_body(case: str, rows: int, cols: int) -> tuple[bytes, int]:
    """(body, decoded bytes) for a case."""
    import numpy as np
    from PIL import Image

    kind = CASES[case][0]
    out = io.BytesIO()
    if kind == "png":
        if case == "png-gray16":
            Image.fromarray(_pattern(rows, cols, 1, 16)).save(out, format="PNG", compress_level=1)
            return out.getvalue(), rows * cols * 2
        if case in ("png-rgb16", "png-rgba16"):
            # Pillow cannot write 16-bit colour; a minimal writer (colour type 2 or 6, depth 16) does.
            channels = 3 if case == "png-rgb16" else 4
            return _png16(_pattern(rows, cols, channels, 16)), rows * cols * 2 * channels
        channels = {"png-gray8": 1, "png-palette": 1, "png-gray-alpha8": 2, "png-rgb8": 3, "png-rgba8": 4}[case]
        image = Image.fromarray(_pattern(rows, cols, channels, 8), "LA" if channels == 2 else None)
        if case == "png-palette":
            image = image.convert("P")
        image.save(out, format="PNG", compress_level=1)
        return out.getvalue(), rows * cols * channels
    if kind == "jpeg":
        channels = 3 if "rgb" in case else 1
        image = Image.fromarray(_pattern(rows, cols, channels, 8))
        exif = Image.Exif()
        if case == "jpeg-rgb-rotated":
            exif[0x0112] = 6
        image.save(out, format="JPEG", quality=90, progressive="progressive" in case, exif=exif.tobytes())
        return out.getvalue(), rows * cols * channels
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[case])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    ds.Rows, ds.Columns = rows, cols
    ds.PixelRepresentation = 0
    if case in ("dicom-rgb8", "dicom-rgb16"):
        bits = 8 if case == "dicom-rgb8" else 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        pixels = _pattern(rows, cols, 3, bits)
    elif case == "dicom-palette8":
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ramp = np.linspace(0, 65535, 256).astype("<u2")
        for colour, table in (("Red", ramp), ("Green", ramp[::-1]), ("Blue", ramp // 2)):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
        pixels = _pattern(rows, cols, 1, 8)
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        bits = {"dicom-mono8": 8, "dicom-mono32": 32}.get(case, 16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, min(bits, 12) if bits == 16 else bits, bits - 1
        if bits == 16:
            ds.HighBit = 11
        pixels = _pattern(rows, cols, 1, 8 if bits == 8 else 12)
        if bits == 32:
            pixels = pixels.astype(np.uint32)
        if case == "dicom-mono16-padding":
            ds.PixelPaddingValue = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if case.endswith(("-jpeg2000", "-jpegls", "-rle")):
        from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

        syntax = {"-jpeg2000": JPEG2000Lossless, "-jpegls": JPEGLSLossless, "-rle": RLELossless}
        ds.compress(
            syntax["-" + case.rsplit("-", 1)[1]],
            pixels,
            encoding_plugin={"jpeg2000": "pylibjpeg", "jpegls": "pyjpegls", "rle": "pydicom"}[case.rsplit("-", 1)[1]],
        )
    ds.save_as(out, enforce_file_format=True)
    samples = 3 if case.startswith("dicom-rgb") else 1
    return out.getvalue(), rows * cols * samples * int(ds.BitsAllocated) // 8


def _png16(pixels) -> bytes:
    import struct
    import zlib

    rows, cols, channels = pixels.shape
    raw = b"".join(b"\0" + pixels[r].astype(">u2").tobytes() for r in range(rows))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", cols, rows, 16, 2 if channels == 3 else 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


def run_case(case: str, body_path: Path, stage: str) -> dict[str, float]:
    """In this (fresh) process: peak RSS and tracemalloc peak of ``stage`` on the body in ``body_path``.

    ``decode`` runs without torch, as the decode worker processes do; ``prepare`` loads the decoded pixels the
    ``decode`` stage saved (``BODY.npy``, standing for the buffer the server receives them into) and resizes
    and normalises them to a 256 × 256 grid, as the server does."""
    import gc
    import tracemalloc

    import numpy as np

    from models.imaging.decode import decode_image
    from models.imaging.limits import DecodeLimits

    unlimited = DecodeLimits(
        max_body_bytes=2**34, max_pixels=2**40, max_decode_bytes=2**40, max_dicom_element_bytes=2**34
    )
    kind = CASES[case][0]
    pixels_path = body_path.with_suffix(".npy")
    if stage == "decode":
        body = body_path.read_bytes()
        tiny, _ = make_body(case, 32, 32)
        decode_image(tiny, None)  # codec tables and lazy imports, not counted
        gc.collect()
        tracemalloc.start()
        rss_before = _status("VmRSS")
        _reset_peak()
        decoded = decode_image(body, None, unlimited)
        peak = _status("VmHWM") - rss_before
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert decoded.source == kind
        np.save(pixels_path, decoded.pixels)
        return {"peak_rss_bytes": peak, "tracemalloc_peak_bytes": traced_peak}
    import torch

    from models.imaging.grid import normalise, resize_unit

    torch.set_num_threads(1)
    normalise(resize_unit(np.zeros((64, 48), np.float32), (256, 256))[None], [0.5] * 3, [0.25] * 3)
    gc.collect()
    tracemalloc.start()
    rss_before = _status("VmRSS")
    _reset_peak()
    pixels = np.load(pixels_path)
    grid = normalise(resize_unit(pixels, (256, 256))[None], [0.5] * 3, [0.25] * 3)
    peak = _status("VmHWM") - rss_before
    _, traced_peak = tracemalloc.get_traced_memory()
    assert grid.shape == (1, 3, 256, 256)
    return {"peak_rss_bytes": peak, "tracemalloc_peak_bytes": traced_peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="4000x4000", help="ROWSxCOLS of every case")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--body", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stage", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.body, args.stage)))
        return
    from models.imaging.budget import WORKING_FACTORS, read_header

    rows, cols = (int(v) for v in args.size.split("x"))
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "size": f"{rows}x{cols}",
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases.split(","):
            body, decoded_bytes = make_body(case, rows, cols)
            body_path = Path(scratch) / case
            body_path.write_bytes(body)
            header = read_header(body)
            assert header is not None and header.decoded_bytes == decoded_bytes, case
            row: dict[str, object] = {
                "description": CASES[case][1],
                "layout": header.layout,
                "body_bytes": len(body),
                "budget_factor": WORKING_FACTORS[header.layout],
            }
            row["decoded_bytes"] = decoded_bytes
            for stage in ("decode", "prepare"):
                out = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--body", str(body_path), "--stage", stage],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=dict(os.environ, OMP_NUM_THREADS="1"),
                )
                measured = json.loads(out.stdout.strip().splitlines()[-1])
                row[stage] = {
                    **measured,
                    "factor": round(measured["peak_rss_bytes"] / decoded_bytes, 2),
                    "tracemalloc_factor": round(measured["tracemalloc_peak_bytes"] / decoded_bytes, 2),
                }
            results["cases"][case] = row
            print(
                f"{case:24s} decoded {decoded_bytes / 2**20:7.1f} MiB  factor decode "
                f"{row['decode']['factor']:5.2f} (tracemalloc {row['decode']['tracemalloc_factor']:5.2f})  "
                f"prepare {row['prepare']['factor']:5.2f}  total "
                f"{row['decode']['factor'] + row['prepare']['factor']:5.2f}  budget factor {row['budget_factor']}",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
