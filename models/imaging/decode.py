"""Image ingestion: request bytes (DICOM, PNG, JPEG) → the one grayscale array the model sees.

Every accepted image leaves here as a float32 ``[H, W]`` array in ``[0, 1]`` with MONOCHROME2 semantics
(higher = brighter on screen = denser), in display orientation. Everything else is refused with an
:class:`ImageError` whose ``code``/``detail`` map straight onto the API's JSON errors (docs/api.md, "Errors");
no other exception escapes for any input bytes (the fuzz test holds this). The module knows nothing of HTTP
frameworks so the routes stay thin; it is synchronous and meant to run in a worker thread.

Safety, in the order the checks run:

* body length against ``max_body_bytes`` (413), empty body (400), declared media type (415 when unknown or
  contradicted by the magic bytes);
* pixel count from the *header* against ``max_pixels`` before any pixel buffer is allocated (413): PNG IHDR /
  JPEG SOF via Pillow's lazy open (the plugin classes are used directly, so Pillow's own process-global
  ``MAX_IMAGE_PIXELS`` check is neither relied on nor mutated), DICOM Rows × Columns × Number of Frames, and for
  compressed DICOM also the codestream's own SOF/SIZ size, which must agree with Rows × Columns (a small header
  in front of a huge codestream is a bomb);
* DICOM element lengths: every top-level element's declared length must fit in the bytes that follow it (else
  400, truncated) and under ``max_dicom_element_bytes`` (413); a Deflated transfer syntax is inflated in a
  bounded stream first, because pydicom inflates the whole dataset in one call;
* truncated rasters are refused, never partially decoded (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False).

DICOM pixel pipeline (DICOM PS3.3), applied in this order:

1. Bits Stored / Pixel Representation: pydicom's decoders mask unused high bits and sign-extend signed data
   (C.7.6.3.1.1); pixels with a Pixel Padding Value (C.7.5.1.1.2), or inside the range it spans with Pixel
   Padding Range Limit (C.7.6.3.1.4), are marked on these *stored* values.
2. Modality LUT (C.11.1): Modality LUT Sequence if present, else Rescale Slope / Intercept.
3. VOI LUT (C.11.2): the first VOI LUT Sequence item if present, else the first Window Center / Width with VOI
   LUT Function LINEAR (C.11.2.1.2.1), LINEAR_EXACT (C.11.2.1.3.2) or SIGMOID (C.11.2.1.3.1); with neither,
   min–max over the non-padding pixels. Padding never takes part in the min–max and ends black.
4. Photometric Interpretation (C.7.6.3.1.2): MONOCHROME1 is inverted after the VOI stage, so the same image
   stored as MONOCHROME1 and as MONOCHROME2 yields the same array; RGB, YBR_FULL(_422) (converted by pydicom's
   ``convert_color_space``), YBR_ICT/YBR_RCT (converted inside the JPEG 2000 codec) and PALETTE COLOR
   (C.7.6.3.1.5–6) become luminance with the ITU-R BT.601 weights that YBR_FULL's Y and Pillow's "L" use.
   Presentation LUT Shape is not applied.

PNG/JPEG: 1/2/4/8/16-bit grayscale, RGB, palette and alpha (composited over black, like padding) become the
same BT.601 luminance; EXIF orientation is applied (``ImageOps.exif_transpose``).
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin
from pydicom import uid as dicom_uid
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.pixels.processing import apply_color_lut, convert_color_space

from models.imaging.budget import (
    ImageHeader,
    check_decode_budget,
    check_jpeg_scans,
    check_png_chunks,
    dicom_image_header,
    jpeg_header,
    png_header,
    read_header,
)
from models.imaging.errors import BadImage, ImageError, TooLarge, UnsupportedImage, UnsupportedMediaType
from models.imaging.limits import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "DICOM_MEDIA_TYPE",
    "JPEG_MEDIA_TYPE",
    "PNG_MEDIA_TYPE",
    "decode_file",
    "decode_image",
    "inspect_upload",
    "media_type_of",
    "sniff_media_type",
    "to_display_png",
]

DICOM_MEDIA_TYPE = "application/dicom"
PNG_MEDIA_TYPE = "image/png"
JPEG_MEDIA_TYPE = "image/jpeg"

# ITU-R BT.601 luma weights: the Y of DICOM YBR_FULL (PS3.3 C.7.6.3.1.2) and Pillow's RGB → "L".
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Colour and DICOM pixel conversions run in strips of about this many pixels (whole rows), writing into one
# preallocated float32 output: the temporaries of one strip (a few MB) instead of several full-size arrays.
STRIP_PIXELS = 1 << 16


def strip_bounds(height: int, width: int) -> list[tuple[int, int]]:
    """(top, bottom) row ranges of the strips of a ``height`` × ``width`` image."""
    rows = max(1, STRIP_PIXELS // max(width, 1))
    return [(top, min(top + rows, height)) for top in range(0, height, rows)]


@dataclass
class DecodedImage:
    # float32 [H, W] in [0, 1], higher = brighter (MONOCHROME2), display orientation; [F, H, W] for a multi-frame
    # DICOM decoded with ``multi_frame=True`` (F = number_of_frames > 1), frames in stored order.
    pixels: npt.NDArray[np.float32]
    width: int
    height: int
    source: str  # "dicom" | "png" | "jpeg"
    bits_stored: int  # DICOM Bits Stored; PNG/JPEG: bits per decoded sample (1, 8 or 16)
    sop_instance_uid: str | None = None  # DICOM only; identifiers, never patient data, may be logged
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    photometric: str | None = None  # DICOM Photometric Interpretation as stored
    window: tuple[float, float] | None = None  # (center, width) applied, if any
    # DICOM header facts that route an instance to a model and decide whether it can be assessed at all
    # (models.imaging.assessability); None when absent or empty, and for PNG/JPEG.
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    view_position: str | None = None
    # Number of Frames as declared (1 when absent). 0: the instance holds no frame, nothing was decoded and
    # ``pixels`` is empty (0 × 0) while width/height are Columns/Rows; the caller decides, not the decoder.
    number_of_frames: int = 1

    @property
    def frames(self) -> list[npt.NDArray[np.float32]]:
        """Every decoded frame as an [H, W] array (one for a single-frame image, none for Number of Frames 0)."""
        if self.pixels.ndim == 3:
            return list(self.pixels)
        return [self.pixels] if self.pixels.size else []


# Decoders written in Rust (pylibjpeg-rle, via pyo3) report a panic on hostile input as
# pyo3_runtime.PanicException, a BaseException; the decode boundaries catch BaseException and re-raise only these.
_CONTROL_FLOW = (KeyboardInterrupt, SystemExit, GeneratorExit)

# ---------------------------------------------------------------------------------------------------------
# Media types
# ---------------------------------------------------------------------------------------------------------

_KIND_OF_MEDIA_TYPE = {
    DICOM_MEDIA_TYPE: "dicom",
    PNG_MEDIA_TYPE: "png",
    JPEG_MEDIA_TYPE: "jpeg",
    "image/jpg": "jpeg",  # not registered, but sent by some clients for the same bytes
}
_MEDIA_TYPE_OF_KIND = {"dicom": DICOM_MEDIA_TYPE, "png": PNG_MEDIA_TYPE, "jpeg": JPEG_MEDIA_TYPE}
_NAME_OF_KIND = {"dicom": "DICOM", "png": "PNG", "jpeg": "JPEG"}
_SNIFFED_TYPES = {"", "application/octet-stream"}  # "no claim": let the magic bytes decide

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
# Explicit VR codes (PS3.5 6.2) used to recognise a raw dataset's first element.
_VR_CODES = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


def sniff_media_type(body: bytes) -> str | None:
    """The media type the magic bytes say, or None: PNG signature, JPEG SOI, DICOM Part 10 (128-byte preamble
    + "DICM") or a raw DICOM dataset without preamble (first element in group 0002 or 0008)."""
    head = bytes(body[:132])
    if head.startswith(_PNG_SIGNATURE):
        return PNG_MEDIA_TYPE
    if head.startswith(_JPEG_SOI):
        return JPEG_MEDIA_TYPE
    if head[128:132] == b"DICM":
        return DICOM_MEDIA_TYPE
    if _looks_like_raw_dataset(head, len(body)):
        return DICOM_MEDIA_TYPE
    return None


def _looks_like_raw_dataset(head: bytes, total: int) -> bool:
    """A preamble-less dataset (PS3.5 7.1): a little-endian tag in group 0002/0008 followed by an explicit VR
    code or a plausible implicit-VR length, or a big-endian group 0008 tag followed by a VR code."""
    if len(head) < 8:
        return False
    group_le, element_le = struct.unpack_from("<HH", head)
    if group_le in (0x0002, 0x0008) and element_le < 0x1000:
        if head[4:6] in _VR_CODES:
            return True
        (implicit_length,) = struct.unpack_from("<I", head, 4)
        return int(implicit_length) <= total - 8
    group_be, element_be = struct.unpack_from(">HH", head)
    return group_be == 0x0008 and element_be < 0x1000 and head[4:6] in _VR_CODES


def media_type_of(header_value: str | None) -> str | None:
    """A Content-Type header's media type: parameters dropped, lower case; None when absent or empty."""
    if not header_value:
        return None
    return header_value.split(";", 1)[0].strip().lower() or None


def _declared_kind(content_type: str | None) -> str | None:
    """ "dicom" | "png" | "jpeg" for a supported Content-Type, None for "sniff"; 415 for anything else."""
    media_type = media_type_of(content_type) or ""
    if media_type in _SNIFFED_TYPES:
        return None
    kind = _KIND_OF_MEDIA_TYPE.get(media_type)
    if kind is None:
        raise UnsupportedMediaType(
            f"content type {media_type!r} is not supported; send application/dicom, image/png or image/jpeg"
        )
    return kind


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------


def decode_image(
    body: bytes, content_type: str | None, limits: DecodeLimits = DEFAULT_LIMITS, *, multi_frame: bool = False
) -> DecodedImage:
    """Request body → :class:`DecodedImage`, or an :class:`ImageError` (never another exception).

    ``multi_frame``: a DICOM with Number of Frames > 1 (up to ``limits.max_frames``) is decoded to
    ``pixels`` [F, H, W]; without it such a DICOM is refused (``UnsupportedImage``), for callers that handle
    one frame only (training, evaluation)."""
    kind, body = _upload_kind(body, content_type, limits)
    if kind == "dicom":
        return _decode_dicom(body, limits, multi_frame)
    return _decode_raster(body, kind, limits)


def inspect_upload(body: bytes, content_type: str | None, limits: DecodeLimits = DEFAULT_LIMITS) -> ImageHeader | None:
    """What ``decode_image`` would refuse before decoding, found without decoding: the body size and media type
    (the same refusals), then, when the header can be read cheaply (``budget.read_header``), its pixel count
    and the decode budget (413). Returns that header, or None when only the decoder can read it (it checks
    the same limits then). Cheap enough for an event loop: it never parses more than the header."""
    kind, body = _upload_kind(body, content_type, limits)
    header = read_header(body)
    if header is None or header.kind != kind:
        return None
    _check_pixel_count(header.width, header.height, header.frames, limits, _NAME_OF_KIND[kind])
    _check_frame_count(header.frames, limits)
    check_decode_budget(header, limits)
    return header


def _upload_kind(body: bytes, content_type: str | None, limits: DecodeLimits) -> tuple[str, bytes]:
    """("dicom" | "png" | "jpeg", the body as bytes) after the body-size and media-type checks."""
    if len(body) > limits.max_body_bytes:
        raise TooLarge(f"the body has {len(body)} bytes; the limit is {limits.max_body_bytes}")
    declared = _declared_kind(content_type)
    if len(body) == 0:
        raise BadImage("the body is empty")
    body = bytes(body)
    sniffed_type = sniff_media_type(body)
    sniffed = _KIND_OF_MEDIA_TYPE[sniffed_type] if sniffed_type else None
    if declared is None and sniffed is None:
        raise BadImage("the body is not a PNG, JPEG or DICOM image (its leading bytes match none of them)")
    if declared is not None and sniffed is not None and declared != sniffed:
        raise UnsupportedMediaType(
            f"the content type says {_MEDIA_TYPE_OF_KIND[declared]} but the body is a "
            f"{_NAME_OF_KIND[sniffed]} image; send it as {_MEDIA_TYPE_OF_KIND[sniffed]}"
        )
    kind = sniffed or declared
    assert kind is not None  # both None was refused above
    return kind, body


def decode_file(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS, *, multi_frame: bool = False) -> DecodedImage:
    """An image file → :class:`DecodedImage` by exactly the path ``decode_image`` takes for uploaded bytes.

    The format comes from the file's magic bytes, not its name. Training, evaluation and the service therefore
    see the same array for the same file. A missing or unreadable file raises ``BadImage`` naming it.
    """
    file_path = Path(path)
    try:
        size = file_path.stat().st_size
        if size > limits.max_body_bytes:
            raise TooLarge(f"{file_path}: {size} bytes; the limit is {limits.max_body_bytes}")
        body = file_path.read_bytes()
    except FileNotFoundError:
        raise BadImage(f"{file_path}: no such image file") from None
    except OSError as exc:
        raise BadImage(f"{file_path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(body, None, limits, multi_frame=multi_frame)


def to_display_png(image: DecodedImage) -> bytes:
    """8-bit grayscale PNG of exactly the array the model sees (same size, so viewer overlays line up). A
    multi-frame image becomes one PNG with its frames stacked top to bottom (F × H rows): the viewer cuts it."""
    pixels = image.pixels.reshape(-1, image.pixels.shape[-1]) if image.pixels.ndim == 3 else image.pixels
    gray8 = np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(gray8, mode="L").save(out, format="PNG", compress_level=3)
    return out.getvalue()


def _check_pixel_count(width: int, height: int, frames: int, limits: DecodeLimits, what: str) -> None:
    if width <= 0 or height <= 0:
        raise BadImage(f"the {what} header declares an empty image ({width}×{height})")
    count = width * height * max(frames, 1)
    if count > limits.max_pixels:
        frames_text = f"×{frames} frames" if frames > 1 else ""
        raise TooLarge(
            f"the {what} header declares {width}×{height}{frames_text} = {count} pixels; "
            f"the limit is {limits.max_pixels}"
        )


def _check_frame_count(frames: int, limits: DecodeLimits) -> None:
    if frames > limits.max_frames:
        raise TooLarge(f"the DICOM declares {frames} frames; at most {limits.max_frames} are assessed per instance")


def _library_failure(exc: BaseException) -> str:
    """A decoder's own message, shortened: useful to the sender, never a stack trace."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _luminance(rgb: npt.NDArray[Any], full_scale: float) -> npt.NDArray[np.float32]:
    """[H, W, 3] → [H, W] float32 in [0, 1] with the BT.601 weights."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    luma: npt.NDArray[np.float32] = (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b) / np.float32(
        full_scale
    )
    np.clip(luma, 0.0, 1.0, out=luma)
    return luma


def _colour_in_strips(
    stored: npt.NDArray[Any], to_gray: Callable[[npt.NDArray[Any]], npt.NDArray[np.float32]]
) -> npt.NDArray[np.float32]:
    """``to_gray`` (a per-pixel colour → luminance conversion) strip by strip into one float32 output."""
    out = np.empty(stored.shape[:2], dtype=np.float32)
    for top, bottom in strip_bounds(stored.shape[0], stored.shape[1]):
        out[top:bottom] = _finite(to_gray(stored[top:bottom]))
    return out


# ---------------------------------------------------------------------------------------------------------
# PNG / JPEG
# ---------------------------------------------------------------------------------------------------------

_RASTER_PLUGIN = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile}
_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _decode_raster(body: bytes, kind: str, limits: DecodeLimits) -> DecodedImage:
    name = _NAME_OF_KIND[kind]
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Partially decoded images are never accepted; some other code flipped Pillow's process-wide switch.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; NormGate refuses to decode with it")
    # Pillow raises many exception types for hostile bytes (SyntaxError, OSError, ValueError, struct.error,
    # EOFError, ...); at this boundary every one of them means "undecodable", hence the broad clauses.
    # Before Pillow sees the bytes: its PNG reader parses every chunk in Python, and a progressive JPEG decoder
    # passes over the whole image once per scan.
    if kind == "png":
        check_png_chunks(body, limits)
    else:
        check_jpeg_scans(body, limits)
    try:
        # The plugin class parses only the header (IHDR / SOF, EXIF) and allocates nothing for pixels.
        im = _RASTER_PLUGIN[kind](io.BytesIO(body))
    except MemoryError as exc:
        raise TooLarge(f"the {name} header could not be parsed within memory") from exc
    except Exception as exc:
        raise BadImage(f"not a decodable {name} image: {_library_failure(exc)}") from exc
    with im:
        width, height = im.size
        _check_pixel_count(width, height, 1, limits, name)
        if getattr(im, "n_frames", 1) > 1:
            raise UnsupportedImage(f"animated {name} is not supported; send a single still image")
        check_decode_budget(_raster_header(body, kind, im), limits)
        try:
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            gray, bits = _raster_to_gray(im)
        except ImageError:
            raise
        except MemoryError as exc:
            raise TooLarge(f"the {name} image could not be decoded within memory") from exc
        except Exception as exc:
            raise BadImage(f"the {name} image could not be decoded: {_library_failure(exc)}") from exc
    return DecodedImage(pixels=gray, width=gray.shape[1], height=gray.shape[0], source=kind, bits_stored=bits)


def _raster_header(body: bytes, kind: str, im: Image.Image) -> ImageHeader:
    """The budget's view of a PNG/JPEG, with the EXIF transposition Pillow will apply."""
    header = png_header(body) if kind == "png" else jpeg_header(body)
    width, height = im.size
    if header is None or (header.width, header.height) != (width, height):
        # Pillow read a header ours did not (or read it differently): assume the costliest colour layout.
        header = ImageHeader(kind, width, height, 1, 4, 1, "png-rgba" if kind == "png" else "jpeg-colour-progressive")
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # an unreadable EXIF block: exif_transpose will not transpose either
        orientation = 1
    if orientation in range(2, 9):
        header = ImageHeader(**{**header.__dict__, "transposed": True})
    return header


def _raster_to_gray(im: Image.Image) -> tuple[npt.NDArray[np.float32], int]:
    """A loaded Pillow image → ([H, W] float32 in [0, 1], bits per decoded sample).

    Converted in strips (``strip_bounds``) into one preallocated output, so the peak is the decoded image
    plus the float32 output plus one strip's temporaries (a whole-image conversion held the RGB bytes, three
    float32 channels and their weighted sums at once: 9× an RGB image's decoded bytes instead of 2.7×,
    docs/ingestion.md "Decode budget"). Every operation is per pixel, so the numbers are those of a
    whole-image conversion. Values come from integer samples, so they are finite by construction.
    """
    mode = im.mode
    target: str | None = None
    if "transparency" in im.info and mode in ("L", "RGB", "P"):
        # tRNS marks colours as transparent; make it an alpha channel so it is composited like RGBA.
        target = "LA" if mode == "L" else "RGBA"
    elif mode == "P":
        target = "RGB"
    elif mode == "PA":
        target = "RGBA"
    elif mode not in ("1", "L", "LA", "RGB", "RGBA") and mode not in _GRAY16_MODES:
        target = "RGB"  # CMYK / YCbCr JPEGs and other colour models
    width, height = im.size
    out = np.empty((height, width), dtype=np.float32)
    bits = 8
    for top, bottom in strip_bounds(height, width):
        # crop() keeps the palette and info (tRNS), so converting a strip equals converting the whole image.
        strip = im.crop((0, top, width, bottom))
        if target is not None:
            strip = strip.convert(target)
        out[top:bottom], bits = _strip_to_gray(np.asarray(strip), strip.mode)
    return out, bits


def _strip_to_gray(arr: npt.NDArray[Any], mode: str) -> tuple[npt.NDArray[np.float32], int]:
    if mode == "1":
        return arr.astype(np.float32), 1
    if mode == "L":
        return arr.astype(np.float32) / np.float32(255.0), 8
    if mode in _GRAY16_MODES:
        return np.clip(arr.astype(np.float32) / np.float32(65535.0), 0.0, 1.0), 16
    if mode == "LA":
        alpha = arr[..., 1].astype(np.float32) / np.float32(255.0)
        return arr[..., 0].astype(np.float32) / np.float32(255.0) * alpha, 8
    if mode == "RGB":
        return _luminance(arr, 255.0), 8
    if mode == "RGBA":
        alpha = arr[..., 3].astype(np.float32) / np.float32(255.0)
        return _luminance(arr[..., :3], 255.0) * alpha, 8
    raise UnsupportedMediaType(f"image mode {mode!r} is not supported")  # unreachable after the conversions


# ---------------------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------------------

# Elements above this size are left in the body until used (pixel data only after the size checks passed).
_DEFER_BYTES = 1 * 2**20
_UNDEFINED_LENGTH = 0xFFFFFFFF
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_REQUIRED_PIXEL_ELEMENTS = (
    ("Rows", "0028,0010"),
    ("Columns", "0028,0011"),
    ("BitsAllocated", "0028,0100"),
    ("BitsStored", "0028,0101"),
    ("PhotometricInterpretation", "0028,0004"),
)
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


def _decode_dicom(body: bytes, limits: DecodeLimits, multi_frame: bool = False) -> DecodedImage:
    ds, stream_length = _read_dicom(body, limits)
    # pydicom converts element values lazily, on first access, so a hostile value (unknown VR, unparsable
    # number, wrong length) raises wherever it is first touched; at this boundary all of those are "bad image".
    try:
        return _dicom_to_image(ds, stream_length, limits, multi_frame)
    except (ImageError, *_CONTROL_FLOW):
        raise
    except MemoryError as exc:
        raise TooLarge("the DICOM image could not be processed within memory") from exc
    except BaseException as exc:
        raise BadImage(f"the DICOM file is malformed: {_library_failure(exc)}") from exc


def _dicom_to_image(ds: Dataset, stream_length: int, limits: DecodeLimits, multi_frame: bool = False) -> DecodedImage:
    _check_element_lengths(ds, stream_length, limits)

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedMediaType("DICOM Float/Double Float Pixel Data is not supported; send integer Pixel Data")
        raise BadImage("the DICOM dataset has no Pixel Data (7FE0,0010): nothing to assess")

    missing = [f"{keyword} ({tag})" for keyword, tag in _REQUIRED_PIXEL_ELEMENTS if ds.get(keyword) in (None, "")]
    if missing:
        raise BadImage("the DICOM Image Pixel module lacks " + ", ".join(missing))
    try:
        rows = int(ds.Rows)
        columns = int(ds.Columns)
        declared_frames = ds.get("NumberOfFrames")
        frames = 1 if declared_frames in (None, "") else int(declared_frames)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits_stored = int(ds.BitsStored)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
    except Exception as exc:  # missing or malformed Image Pixel module elements
        raise BadImage(f"the DICOM Image Pixel module is incomplete or malformed: {_library_failure(exc)}") from exc

    _check_pixel_count(columns, rows, frames, limits, "DICOM")
    if frames < 0:
        raise BadImage(f"DICOM Number of Frames is {frames}")
    if frames == 0:  # a fact for the gate to answer (unassessable), not a decode error: no pixel is read
        return _dicom_image(ds, np.zeros((0, 0), dtype=np.float32), columns, rows, bits_stored, photometric, None, 0)
    _check_frame_count(frames, limits)
    check_decode_budget(
        dicom_image_header(
            rows,
            columns,
            frames,
            samples,
            int(ds.get("BitsAllocated") or 16),
            photometric,
        ),
        limits,
    )
    if frames > 1 and not multi_frame:
        raise UnsupportedImage("multi-frame DICOM is not supported here; send one frame per instance")
    if not 1 <= bits_stored <= 32:
        raise BadImage(f"DICOM Bits Stored {bits_stored} is outside 1–32")
    if photometric not in _MONOCHROME + _COLOUR:
        raise UnsupportedMediaType(f"DICOM Photometric Interpretation {photometric!r} is not supported")
    if (samples == 1) != (photometric in (*_MONOCHROME, "PALETTE COLOR")):
        raise BadImage(f"DICOM Samples per Pixel {samples} contradicts Photometric Interpretation {photometric}")

    transfer_syntax = ds.file_meta.TransferSyntaxUID
    decoder = _decoder_for(transfer_syntax)
    if transfer_syntax.is_compressed:
        _check_codestream_size(ds, transfer_syntax, rows, columns, frames)
    elif photometric != "YBR_FULL_422":  # 4:2:2 native data is smaller than Rows × Columns × 3 samples
        _check_native_length(ds, rows, columns, frames, samples)

    try:
        stored, decoded_meta = decoder.as_array(ds, index=0 if frames == 1 else None)
    except _CONTROL_FLOW:
        raise
    except MemoryError as exc:
        raise TooLarge("the DICOM pixel data could not be decoded within memory") from exc
    except BaseException as exc:
        raise BadImage(
            f"the DICOM pixel data ({transfer_syntax.name}) could not be decoded: {_library_failure(exc)}"
        ) from exc
    expected_shape = (rows, columns) if samples == 1 else (rows, columns, samples)
    if frames > 1:
        expected_shape = (frames, *expected_shape)
    if stored.shape != expected_shape:
        raise BadImage(f"the DICOM pixel data decodes to shape {stored.shape}, not {expected_shape}")

    if frames > 1 or "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        pixels, window = _frames_to_display(stored, ds, photometric, bits_stored, decoded_meta, frames)
        return _dicom_image(ds, pixels, columns, rows, bits_stored, photometric, window, frames)
    pixels, window = _to_display(stored, ds, photometric, bits_stored, decoded_meta)
    return _dicom_image(ds, pixels, columns, rows, bits_stored, photometric, window, frames)


# The elements of the Pixel Value Transformation and Frame VOI LUT functional groups (PS3.3 C.7.6.16.2.9,
# C.7.6.16.2.10) that the pixel pipeline reads: a frame's value overrides the shared one, which overrides the
# top-level element (Enhanced MR/CT/XA keep them only in the functional groups).
_FRAME_GROUP_ELEMENTS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}
# What the pipeline reads from the dataset besides those: copied into each frame's view unchanged.
_PIPELINE_ELEMENTS = (
    "BitsAllocated",
    "PixelRepresentation",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)


def _group_values(item: Dataset | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if item is None:
        return values
    for sequence, keywords in _FRAME_GROUP_ELEMENTS.items():
        macro = item.get(sequence)
        if macro:
            for keyword in keywords:
                if keyword in macro[0]:
                    values[keyword] = macro[0][keyword].value
    return values


def _frame_views(ds: Dataset, frames: int) -> list[tuple[Dataset, list[int]]]:
    """The dataset each frame's pixels are converted with (the top level overridden by the shared and then the
    frame's own functional groups), with the frames that share it: [(view, frame indices)], in frame order."""
    shared_items = ds.get("SharedFunctionalGroupsSequence") or [None]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frames:  # inconsistent (e.g. frames extracted from a larger object): shared values only
        per_frame = []
    shared = _group_values(shared_items[0])
    views: dict[tuple[tuple[str, str], ...], tuple[Dataset, list[int]]] = {}
    for index in range(frames):
        values = {**shared, **_group_values(per_frame[index] if per_frame else None)}
        key = tuple(sorted((k, str(v)) for k, v in values.items()))
        if key not in views:
            view = Dataset()
            for keyword in _PIPELINE_ELEMENTS:
                if keyword in ds:
                    view[keyword] = ds[keyword]
            for keyword, value in values.items():
                setattr(view, keyword, value)
            implicit, little = ds.original_encoding
            view.set_original_encoding(implicit, little, ds.original_character_set)
            views[key] = (view, [])
        views[key][1].append(index)
    return list(views.values())


def _frames_to_display(
    stored: npt.NDArray[Any],
    ds: Dataset,
    photometric: str,
    bits_stored: int,
    decoded_meta: dict[str, Any],
    frames: int,
) -> tuple[npt.NDArray[np.float32], tuple[float, float] | None]:
    """Every frame through the pixel pipeline with its functional groups' values. Frames that share their
    values are converted together as one tall image, so a min–max VOI spans the whole cine (its frames stay
    comparable, as one window over the series would keep them)."""
    if frames == 1:
        stored = stored[None]
    height, width = stored.shape[1], stored.shape[2]
    out = np.empty((frames, height, width), dtype=np.float32)
    window = None
    for view, indices in _frame_views(ds, frames):
        group = stored[indices] if len(indices) < frames else stored
        tall = group.reshape(len(indices) * height, width, *group.shape[3:])
        converted, group_window = _to_display(tall, view, photometric, bits_stored, decoded_meta)
        out[indices] = converted.reshape(len(indices), height, width)
        window = window or group_window
    return (out if frames > 1 else out[0]), window


def _to_display(
    stored: npt.NDArray[Any], ds: Dataset, photometric: str, bits_stored: int, decoded_meta: dict[str, Any]
) -> tuple[npt.NDArray[np.float32], tuple[float, float] | None]:
    """One image's (or a stack's, as one tall image) stored values → display values in [0, 1]."""
    window = None
    try:
        if photometric in _MONOCHROME:
            pixels, window = _monochrome_to_display(stored, ds, photometric)
        elif photometric == "PALETTE COLOR":
            depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
            pixels = _colour_in_strips(stored, lambda strip: _luminance(apply_color_lut(strip, ds), 2.0**depth - 1.0))
        else:
            colour_model = str(decoded_meta.get("photometric_interpretation", photometric))
            if colour_model in ("YBR_FULL", "YBR_FULL_422"):
                pixels = _colour_in_strips(
                    stored,
                    lambda strip: _luminance(convert_color_space(strip, colour_model, "RGB"), 2.0**bits_stored - 1.0),
                )
            elif colour_model == "RGB":
                pixels = _colour_in_strips(stored, lambda strip: _luminance(strip, 2.0**bits_stored - 1.0))
            else:
                raise UnsupportedMediaType(f"DICOM colour model {colour_model!r} after decoding is not supported")
    except ImageError:
        raise
    except Exception as exc:  # malformed LUTs / palette descriptors in hostile files
        raise BadImage(f"the DICOM LUT or palette is malformed: {_library_failure(exc)}") from exc
    return pixels, window


def _check_native_length(ds: Dataset, rows: int, columns: int, frames: int, samples: int) -> None:
    """Native Pixel Data must hold Rows × Columns × Samples × Number of Frames values: fewer (a truncated
    cine) or a whole frame more (a count that disagrees with the data) is refused, never guessed at. Trailing
    bytes short of a frame are tolerated as padding, as pydicom does (its MR_small_padded.dcm has 128)."""
    raw = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(raw, "length", None)
    if not isinstance(length, int) or length == _UNDEFINED_LENGTH:
        value = getattr(raw, "value", None)
        if not isinstance(value, (bytes, bytearray)):
            return
        length = len(value)
    bits_allocated = int(ds.get("BitsAllocated") or 16)
    frame_bits = rows * columns * samples * bits_allocated
    expected = -(-frame_bits * frames // 8)
    whole_frames, rest = divmod(length * 8, frame_bits)
    if length >= expected and whole_frames == frames:
        return
    holds = f"{whole_frames} frame{'s' * (whole_frames != 1)}" + (" and a part of one" if rest >= 16 else "")
    raise BadImage(
        f"the DICOM Pixel Data holds {length} bytes ({holds} of {columns}×{rows}), but Number of Frames is "
        f"{frames} ({expected} bytes): Number of Frames does not match the pixel data"
    )


def _dicom_image(
    ds: Dataset,
    pixels: npt.NDArray[np.float32],
    columns: int,
    rows: int,
    bits_stored: int,
    photometric: str,
    window: tuple[float, float] | None,
    frames: int,
) -> DecodedImage:
    return DecodedImage(
        pixels=pixels,
        width=columns,
        height=rows,
        source="dicom",
        bits_stored=bits_stored,
        sop_instance_uid=_uid_or_none(ds, "SOPInstanceUID"),
        study_instance_uid=_uid_or_none(ds, "StudyInstanceUID"),
        series_instance_uid=_uid_or_none(ds, "SeriesInstanceUID"),
        photometric=photometric,
        window=window,
        modality=_uid_or_none(ds, "Modality"),
        body_part_examined=_uid_or_none(ds, "BodyPartExamined"),
        series_description=_uid_or_none(ds, "SeriesDescription"),
        view_position=_uid_or_none(ds, "ViewPosition"),
        number_of_frames=frames,
    )


def _uid_or_none(ds: Dataset, keyword: str) -> str | None:
    """A UID or code string element's value, stripped; None when absent, empty or malformed."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element must not sink an otherwise good image
        return None
    text = str(value).strip() if value is not None else ""
    return text or None


def _read_dicom(body: bytes, limits: DecodeLimits) -> tuple[Dataset, int]:
    """Parse the dataset (pixel data deferred). Returns (dataset, length of the stream element offsets
    refer to). A file without the "DICM" prefix is retried with ``force=True`` only when its first bytes look
    like a raw dataset; its transfer syntax is then the encoding pydicom detected (native pixel data)."""
    meta_end, meta_syntax = _scan_file_meta(body)
    defer_size: int | None = _DEFER_BYTES
    stream_length = len(body)
    if meta_syntax == dicom_uid.DeflatedExplicitVRLittleEndian:
        stream_length = _bounded_inflated_size(body[meta_end:], limits)
        defer_size = None  # deferred reads would seek in the deflated bytes, not the inflated stream
    try:
        try:
            ds = pydicom.dcmread(io.BytesIO(body), defer_size=defer_size, force=False)
        except InvalidDicomError:
            if not _looks_like_raw_dataset(body[:16], len(body)):
                raise BadImage(
                    "not a DICOM file: no 'DICM' prefix after a 128-byte preamble, "
                    "and the bytes do not start like a raw DICOM dataset"
                ) from None
            ds = pydicom.dcmread(io.BytesIO(body), defer_size=defer_size, force=True)
        if len(ds) == 0:
            raise BadImage("the DICOM file holds no data elements")
        if "TransferSyntaxUID" not in ds.file_meta:
            _infer_native_transfer_syntax(ds)
        if ds.file_meta.TransferSyntaxUID == dicom_uid.DeflatedExplicitVRLittleEndian and meta_syntax is None:
            raise BadImage("a Deflated DICOM dataset whose File Meta could not be located")
    except ImageError:
        raise
    except MemoryError as exc:
        raise TooLarge("the DICOM dataset could not be parsed within memory") from exc
    except Exception as exc:  # pydicom raises many types for hostile bytes; all mean "undecodable"
        raise BadImage(f"the DICOM file could not be parsed: {_library_failure(exc)}") from exc
    return ds, stream_length


def _infer_native_transfer_syntax(ds: Dataset) -> None:
    """No (0002,0010): only native pixel data can be read, in the encoding the dataset was parsed with."""
    raw = ds.get_item("PixelData", keep_deferred=True)
    if raw is not None and getattr(raw, "is_undefined_length", False):
        raise BadImage("encapsulated (compressed) pixel data without a Transfer Syntax UID cannot be decoded")
    implicit, little = ds.original_encoding
    if implicit:
        ds.file_meta.TransferSyntaxUID = dicom_uid.ImplicitVRLittleEndian
    elif little or little is None:
        ds.file_meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = dicom_uid.ExplicitVRBigEndian


def _scan_file_meta(body: bytes) -> tuple[int, str | None]:
    """Walk the File Meta group (always Explicit VR Little Endian, PS3.10 7.1) without pydicom, to learn the
    transfer syntax before the dataset is parsed. Returns (offset of the dataset, Transfer Syntax UID | None)."""
    offset = 132 if body[128:132] == b"DICM" else 0
    syntax = None
    while offset + 8 <= len(body):
        group, element = struct.unpack_from("<HH", body, offset)
        if group != 0x0002:
            break
        vr = body[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            if offset + 12 > len(body):
                break
            (length,) = struct.unpack_from("<I", body, offset + 8)
            value_at = offset + 12
        else:
            (length,) = struct.unpack_from("<H", body, offset + 6)
            value_at = offset + 8
        if length == _UNDEFINED_LENGTH or value_at + length > len(body):
            break
        if element == 0x0010:
            syntax = body[value_at : value_at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        offset = value_at + length
    return offset, syntax


def _bounded_inflated_size(deflated: bytes, limits: DecodeLimits) -> int:
    """Inflate in chunks, keeping nothing, and refuse a stream that grows past ``max_dicom_element_bytes``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = deflated
    chunk = 4 * 2**20
    try:
        while True:
            out = inflater.decompress(pending, chunk)
            total += len(out)
            if total > limits.max_dicom_element_bytes:
                raise TooLarge(f"the Deflated DICOM dataset inflates past {limits.max_dicom_element_bytes} bytes")
            pending = inflater.unconsumed_tail
            if not pending or not out:
                break
        total += len(inflater.flush())
    except zlib.error as exc:
        raise BadImage(f"the Deflated DICOM dataset is corrupt: {exc}") from exc
    return total


def _check_element_lengths(ds: Dataset, stream_length: int, limits: DecodeLimits) -> None:
    """Each top-level element's declared length must fit the bytes after it and the element limit.

    pydicom reads a short value silently and then loses every following element (Pixel Data included), so a
    lying length is reported here as what it is: a truncated or corrupt file."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED_LENGTH:
            continue
        # A length the bytes cannot back is a lie (truncation), not a large element: 400 before 413.
        if raw.value_tell + raw.length > stream_length:
            raise BadImage(
                f"DICOM element ({tag.group:04X},{tag.element:04X}) declares {raw.length} bytes but only "
                f"{max(stream_length - raw.value_tell, 0)} remain: the file is truncated or corrupt"
            )
        if raw.length > limits.max_dicom_element_bytes:
            raise TooLarge(
                f"DICOM element ({tag.group:04X},{tag.element:04X}) declares {raw.length} bytes; "
                f"the limit is {limits.max_dicom_element_bytes}"
            )


def _decoder_for(transfer_syntax: dicom_uid.UID) -> Decoder:
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise UnsupportedMediaType(
            f"DICOM transfer syntax {transfer_syntax.name} ({transfer_syntax}) has no installed decoder"
        )
    return decoder


def _check_codestream_size(
    ds: Dataset, transfer_syntax: dicom_uid.UID, rows: int, columns: int, frames: int = 1
) -> None:
    """The size the JPEG/JPEG-LS SOF or JPEG 2000 SIZ marker of every frame declares must be Rows × Columns:
    the codec allocates what the codestream says, so a small header in front of a huge codestream is a bomb,
    and frames of different sizes are no cine. A multi-frame's encapsulated data must hold Number of Frames
    frames."""
    from pydicom.encaps import generate_fragments, generate_frames

    try:
        if frames == 1:
            items = generate_fragments(ds.PixelData)
            next(items)  # the Basic Offset Table item (PS3.5 A.4), possibly empty
            starts = [next(items)]
        else:
            starts = list(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception as exc:
        raise BadImage(f"the encapsulated DICOM pixel data is malformed: {_library_failure(exc)}") from exc
    if len(starts) != frames:
        raise BadImage(
            f"the encapsulated DICOM pixel data holds {len(starts)} frames, but Number of Frames is {frames}: "
            "Number of Frames does not match the pixel data"
        )
    if transfer_syntax == dicom_uid.RLELossless:
        return  # RLE output size comes from Rows × Columns only, already checked
    for index, start in enumerate(starts):
        declared = _jpeg2000_size(start) or _jpeg_size(start)
        if declared is None:
            continue  # unparsable headers are left to the codec, which then fails on its own
        width, height = declared
        if (width, height) != (columns, rows):
            which = "the compressed frame" if frames == 1 else f"compressed frame {index + 1} of {frames}"
            raise BadImage(f"{which} declares {width}×{height} but Rows × Columns say {columns}×{rows}")


def _jpeg_size(stream: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOFn (JPEG, ITU T.81 B.2.2) or SOF55 (JPEG-LS) marker."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(stream):
        if stream[offset] != 0xFF:
            return None
        marker = stream[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        (length,) = struct.unpack_from(">H", stream, offset + 2)
        is_sof = (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7
        if is_sof and offset + 9 <= len(stream):
            height, width = struct.unpack_from(">HH", stream, offset + 5)
            return width, height
        if marker == 0xDA:  # start of scan before any SOF
            return None
        offset += 2 + length
    return None


def _jpeg2000_size(stream: bytes) -> tuple[int, int] | None:
    """(width, height) from the SIZ marker (ISO/IEC 15444-1 A.5.1), after an optional JP2 box wrapper."""
    offset = 0
    if stream.startswith(b"\x00\x00\x00\x0cjP  "):
        offset = 12
        while offset + 8 <= len(stream):
            (box_length,) = struct.unpack_from(">I", stream, offset)
            if stream[offset + 4 : offset + 8] == b"jp2c":
                offset += 8
                break
            if box_length < 8:
                return None
            offset += box_length
    if stream[offset : offset + 4] != b"\xff\x4f\xff\x51" or offset + 24 > len(stream):
        return None
    xsiz, ysiz, x_origin, y_origin = struct.unpack_from(">IIII", stream, offset + 8)
    return xsiz - x_origin, ysiz - y_origin


# ---- monochrome pixel pipeline (PS3.3 C.11) -----------------------------------------------------------------


def _monochrome_to_display(
    stored: npt.NDArray[np.integer[Any]], ds: Dataset, photometric: str
) -> tuple[npt.NDArray[np.float32], tuple[float, float] | None]:
    padding = _padding_mask(stored, ds)
    if (
        padding is None
        and stored.dtype.itemsize <= 2
        and stored.size > _TABLE_MIN_PIXELS
        and not ds.get("ModalityLUTSequence")
    ):
        return _monochrome_by_table(stored, ds, photometric)
    # Per pixel, in strips: the float64 modality values and their VOI temporaries of one strip at a time, not
    # of the whole image (18.8× the decoded bytes of a 16-bit image with padding before, 4.5× now). Every
    # stage is per pixel except min–max, whose extremes are taken over all patient pixels first.
    value_range = None
    if not ds.get("VOILUTSequence") and _first_window(ds) is None:
        value_range = _patient_range(stored, ds, padding)
    out = np.empty(stored.shape, dtype=np.float32)
    window = None
    for top, bottom in strip_bounds(stored.shape[0], stored.shape[1]):
        strip_padding = None if padding is None else padding[top:bottom]
        display, window = _voi(_modality_lut(stored[top:bottom], ds), ds, value_range)
        if photometric == "MONOCHROME1":
            display = 1.0 - display  # minimum stored value is white (C.7.6.3.1.2)
        if strip_padding is not None:
            display[strip_padding] = 0.0
        out[top:bottom] = _finite(display)
    return out, window


def _patient_range(
    stored: npt.NDArray[np.integer[Any]], ds: Dataset, padding: npt.NDArray[np.bool_] | None
) -> tuple[float, float] | None:
    """(min, max) of the modality values of the non-padding pixels, strip by strip; None when there are none
    or they are all equal (min–max then gives a black image: a constant image carries no contrast)."""
    low, high = math.inf, -math.inf
    for top, bottom in strip_bounds(stored.shape[0], stored.shape[1]):
        values = _modality_lut(stored[top:bottom], ds)
        patient = values if padding is None else values[~padding[top:bottom]]
        if patient.size:
            low, high = min(low, float(patient.min())), max(high, float(patient.max()))
    if not high > low:
        return None
    return low, high


def _finite(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if not np.isfinite(values).all():
        raise BadImage("the image decodes to non-finite values (check Rescale Slope/Intercept and the VOI LUT)")
    return values


# Below this many pixels the per-pixel pipeline is as fast as building a table.
_TABLE_MIN_PIXELS = 1 << 18


def _monochrome_by_table(
    stored: npt.NDArray[np.integer[Any]], ds: Dataset, photometric: str
) -> tuple[npt.NDArray[np.float32], tuple[float, float] | None]:
    """The same pipeline as ``_monochrome_to_display``, run once per stored value instead of once per pixel.

    For 8/16-bit stored values without padding or a Modality LUT Sequence, every stage (rescale, VOI LUT,
    window, min–max, MONOCHROME1 inversion) is a function of the stored value alone, so it is computed on
    ``arange(min, max + 1)`` of the stored values (≤ 65 536 entries, the same float64 operations element by
    element, so the same numbers bit for bit) and the image becomes one table look-up. The min–max VOI sees
    the same extremes: the table's range ends are the image's own min and max and rescale is monotonic.
    A 2500 × 3000 16-bit radiograph: ~35 ms instead of ~210 ms for this stage (docs/benchmarks.md,
    "Profile and hot spots").
    """
    low, high = int(stored.min()), int(stored.max())
    levels = np.arange(low, high + 1, dtype=np.int64).astype(stored.dtype)
    values = _modality_lut(levels, ds)
    # The table's ends are the image's own min and max (rescale is monotonic): min–max over the levels.
    display, window = _voi(values, ds, _value_range(values))
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    table = _finite(np.asarray(display, dtype=np.float32))  # every output pixel is one of these values
    unsigned = np.dtype(f"u{stored.dtype.itemsize}")
    full = np.zeros(1 << (8 * stored.dtype.itemsize), dtype=np.float32)
    if stored.dtype == unsigned:
        full[low : high + 1] = table
    else:  # signed: index by the same bits read as unsigned
        full[levels.view(unsigned)] = table
    return _look_up_in_strips(full, stored.view(unsigned)), window


# Rows per strip of the table look-up: numpy turns a whole index array into intp (8 bytes per pixel, 60 MB for
# 2500 × 3000) before gathering; strips of 16 rows keep that temporary in cache. 16.4 → 9.3 ms for 2500 × 3000,
# and ~90 MB less memory traffic next to the model thread (docs/benchmarks.md, "Decode priority").
_LOOKUP_STRIP_ROWS = 16


def _look_up_in_strips(
    table: npt.NDArray[np.float32], index: npt.NDArray[np.unsignedinteger[Any]]
) -> npt.NDArray[np.float32]:
    out = np.empty(index.shape, dtype=table.dtype)
    for row in range(0, index.shape[0], _LOOKUP_STRIP_ROWS):
        np.take(table, index[row : row + _LOOKUP_STRIP_ROWS], out=out[row : row + _LOOKUP_STRIP_ROWS])
    return out


def _padding_mask(stored: npt.NDArray[np.integer[Any]], ds: Dataset) -> npt.NDArray[np.bool_] | None:
    """Stored values that are padding, not patient (C.7.5.1.1.2 and C.7.6.3.1.4), or None."""
    value = ds.get("PixelPaddingValue")
    if value is None:
        return None
    signed = np.issubdtype(stored.dtype, np.signedinteger)
    limit = ds.get("PixelPaddingRangeLimit")
    ends = [_as_stored_integer(value, ds, signed)]
    if limit is not None:
        ends.append(_as_stored_integer(limit, ds, signed))
    low, high = min(ends), max(ends)
    mask = (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def _as_stored_integer(value: Any, ds: Dataset, signed: bool) -> int:
    """US-or-SS elements may arrive with the wrong signedness; reinterpret for the pixels' representation."""
    number = int(_first_value(value))
    bits = int(ds.get("BitsAllocated") or 16)
    if signed and number >= 2 ** (bits - 1):
        number -= 2**bits
    return number


def _modality_lut(stored: npt.NDArray[np.integer[Any]], ds: Dataset) -> npt.NDArray[np.float64]:
    """Stored values → modality values (C.11.1) as float64."""
    sequence = ds.get("ModalityLUTSequence")
    if sequence:
        return _lookup(stored, sequence[0], ds)[0]
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    slope = 1.0 if slope in (None, "") else float(slope)
    intercept = 0.0 if intercept in (None, "") else float(intercept)
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0.0:
        raise BadImage(f"DICOM Rescale Slope {slope} / Intercept {intercept} are not usable")
    return stored.astype(np.float64) * slope + intercept


def _lookup(values: npt.NDArray[Any], item: Dataset, ds: Dataset) -> tuple[npt.NDArray[np.float64], int]:
    """Apply a LUT item (LUT Descriptor + LUT Data, C.11.1.1.1 / C.11.2.1.1): values below the first mapped
    value take the first entry, above the last the last entry. Returns (float64 output, bits per entry)."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 2**16  # 0 means 65536 entries
    first_mapped = descriptor[1]
    if int(ds.get("PixelRepresentation") or 0) == 1 and first_mapped >= 2**15:
        first_mapped -= 2**16  # US-or-SS read as US
    bits = descriptor[2]
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        little = ds.original_encoding[1] is not False
        table = np.frombuffer(data, dtype="<u2" if little else ">u2")
    else:
        table = np.asarray(data if isinstance(data, (list, tuple, MultiValue)) else [data])
    table = table.astype(np.float64)
    if table.size < entries:
        raise BadImage(f"a DICOM LUT declares {entries} entries but holds {table.size}")
    index = np.clip(np.rint(values) - first_mapped, 0, entries - 1).astype(np.intp)
    return table[index], bits


def _voi(
    values: npt.NDArray[np.float64], ds: Dataset, value_range: tuple[float, float] | None
) -> tuple[npt.NDArray[np.float64], tuple[float, float] | None]:
    """Modality values → [0, 1] through the VOI LUT, the window, or min–max over ``value_range`` (the patient
    pixels' extremes; None: there is no contrast and the image is black)."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        output, bits = _lookup(values, sequence[0], ds)
        if not 1 <= bits <= 16:
            raise BadImage(f"a DICOM VOI LUT declares {bits} bits per entry")
        return np.clip(output / (2.0**bits - 1.0), 0.0, 1.0), None
    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        return window_to_unit(values, center, width, function), window
    return _min_max(values, value_range), None


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    """The first Window Center / Width pair, or None when absent or unusable (then min–max applies)."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        center, width = float(_first_value(center)), float(_first_value(width))
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0.0:
        return None
    return center, width


def _first_value(value: Any) -> Any:
    """The first of a multi-valued element (C.11.2.1.2: several windows are alternatives)."""
    return value[0] if isinstance(value, (list, tuple, MultiValue)) else value


def window_to_unit(
    values: npt.NDArray[np.floating[Any]], center: float, width: float, function: str = "LINEAR"
) -> npt.NDArray[np.float64]:
    """The VOI LUT Function of PS3.3 C.11.2.1.2 with output range [0, 1]:
    LINEAR: 0 if x ≤ c − 0.5 − (w − 1)/2, 1 if x > c − 0.5 + (w − 1)/2, else ((x − (c − 0.5)) / (w − 1) + 0.5);
    LINEAR_EXACT: (x − c) / w + 0.5 clipped; SIGMOID: 1 / (1 + exp(−4 (x − c) / w))."""
    x = values.astype(np.float64, copy=False)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1.0:  # LINEAR requires w ≥ 1; treat a narrower window as the w = 1 step
        width = 1.0
    if width == 1.0:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _value_range(values: npt.NDArray[np.float64]) -> tuple[float, float] | None:
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else None


def _min_max(values: npt.NDArray[np.float64], value_range: tuple[float, float] | None) -> npt.NDArray[np.float64]:
    if value_range is None:
        return np.zeros(values.shape, dtype=np.float64)  # no patient pixels, or a constant image: no contrast
    low, high = value_range
    return np.clip((values - low) / (high - low), 0.0, 1.0)
