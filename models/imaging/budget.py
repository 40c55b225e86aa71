"""The decode budget: what decoding an image and preparing it for a model will cost in memory, read from its
header before any pixel is decoded.

    estimated peak = decoded bytes × WORKING_FACTORS[layout] + FIXED_OVERHEAD_BYTES

*Decoded bytes* is what the header declares the codec will output: width × height × frames × samples per pixel
× bytes per sample (PNG IHDR: colour type and bit depth; JPEG SOF: components; DICOM: Rows × Columns ×
Number of Frames × Samples per Pixel × Bits Allocated). The *working factor* is the measured peak memory of the
whole pipeline for that layout divided by those bytes (``benchmarks/decode_memory.py``; docs/ingestion.md,
"Decode budget", has the table): the decode itself (codec buffers, the float32 output) plus preparing it (the
float32 pixels received by the server and their resize to the model grid). Factors differ by layout because the
output is float32 whatever the input: an 8-bit gray image grows 4× on the way, a 16-bit RGB one shrinks.

``read_header`` is cheap and bounded (PNG: 33 bytes; JPEG: the markers up to the frame header, at most
``_MAX_JPEG_SEGMENTS``; DICOM: the top-level elements up to group 0028, at most ``_MAX_DICOM_ELEMENTS``), so a
server can refuse or route an upload before handing it to a decoder; it never raises and answers None when it
cannot tell (the decoder then checks the same budget from what it parsed). ``decode_image`` always checks the
budget itself, before any pixel is decoded.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from pydicom import uid as dicom_uid

from models.imaging.errors import TooLarge
from models.imaging.limits import MIB, DecodeLimits

__all__ = [
    "FIXED_OVERHEAD_BYTES",
    "WORKING_FACTORS",
    "DecodeBudgetExceeded",
    "ImageHeader",
    "check_decode_budget",
    "check_jpeg_scans",
    "check_png_chunks",
    "read_header",
]

# Peak memory ÷ decoded bytes, per layout: benchmarks/decode_memory.py (decode + prepare, each in a fresh
# process), at least the measured factor × 1.1 rounded up to a half; docs/ingestion.md "Decode budget" has the
# measurements. Compressed DICOM (JPEG 2000, JPEG-LS, RLE) measured below native, whose factor it takes.
WORKING_FACTORS: dict[str, float] = {
    "png-gray": 10.5,  # 1, 2, 4 or 8 bits: Pillow's byte per pixel + the float32 output + the server's copy
    "png-gray16": 6.0,
    "png-palette": 11.5,
    "png-gray-alpha": 7.0,  # Pillow keeps 4 bytes per pixel for LA (16-bit LA: "png-rgba")
    "png-rgb": 5.0,
    "png-rgba": 3.7,
    "png-rgb16": 2.5,  # Pillow reduces 16-bit colour to 8 bits: 4 bytes per pixel for 6 decoded
    "png-rgba16": 2.0,
    "jpeg-gray": 10.5,
    "jpeg-colour": 5.0,
    "jpeg-gray-progressive": 10.5,
    "jpeg-colour-progressive": 5.0,
    "dicom-mono8": 11.5,
    "dicom-mono16": 8.0,  # 6.7 measured with Pixel Padding Value (per-pixel float64 path in strips), 6.2 without
    "dicom-mono32": 4.8,
    "dicom-colour8": 5.5,
    "dicom-colour16": 4.0,
    "dicom-palette8": 11.5,
    "dicom-palette16": 7.0,
}
# What does not grow with the image: one strip's temporaries (decode.STRIP_PIXELS), the codecs' own buffers.
FIXED_OVERHEAD_BYTES = 8 * MIB
# EXIF orientations 5–8 swap rows and columns and 2–4 flip: Pillow transposes into a second image first.
_TRANSPOSED_ORIENTATIONS = frozenset(range(2, 9))
# Bytes per pixel Pillow keeps for a layout (the extra copy a transposition makes).
_PILLOW_BYTES_PER_PIXEL = {"gray": 1, "gray16": 2, "palette": 1}


@dataclass(frozen=True)
class ImageHeader:
    """What a header says about an image's size, as far as its memory cost goes."""

    kind: str  # "png" | "jpeg" | "dicom"
    width: int
    height: int
    frames: int  # DICOM Number of Frames (at least 1 counted); 1 for PNG/JPEG
    samples: int  # samples (channels) per pixel the codec outputs
    bytes_per_sample: int
    layout: str  # key of WORKING_FACTORS
    transposed: bool = False  # an EXIF orientation Pillow applies by transposing the decoded image
    # DICOM only: the attributes a model's ``serves`` block routes by, read from the same header walk (so the
    # model is known before decoding, and the image is resized for its grid once); None when absent or empty.
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    view_position: str | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height * max(self.frames, 1)

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * self.samples * self.bytes_per_sample

    @property
    def estimated_peak_bytes(self) -> int:
        peak = self.decoded_bytes * WORKING_FACTORS[self.layout] + FIXED_OVERHEAD_BYTES
        if self.transposed:
            kind = self.layout.split("-", 1)[1].removesuffix("-progressive")
            peak += self.pixels * _PILLOW_BYTES_PER_PIXEL.get(kind, 4)
        return int(peak)

    def describe(self) -> str:
        frames = f"×{self.frames} frames" if self.frames > 1 else ""
        bits = 8 * self.bytes_per_sample
        sample_text = f"{self.samples} samples" if self.samples > 1 else "1 sample"
        return f"{self.width}×{self.height}{frames}, {sample_text} of {bits} bits"


class DecodeBudgetExceeded(TooLarge):
    """Decoding would need more memory than ``DecodeLimits.max_decode_bytes`` (413 too_large)."""

    def __init__(self, detail: str, estimated_bytes: int, limit_bytes: int) -> None:
        super().__init__(detail)
        self.estimated_bytes = estimated_bytes
        self.limit_bytes = limit_bytes


def check_decode_budget(header: ImageHeader, limits: DecodeLimits) -> None:
    """Raise :class:`DecodeBudgetExceeded` when the estimated peak is over ``limits.max_decode_bytes``."""
    estimated = header.estimated_peak_bytes
    if estimated > limits.max_decode_bytes:
        name = {"png": "PNG", "jpeg": "JPEG", "dicom": "DICOM"}[header.kind]
        raise DecodeBudgetExceeded(
            f"decoding this {name} image ({header.describe()}) would take about {_mib(estimated)} MiB of "
            f"memory; the limit is {_mib(limits.max_decode_bytes)} MiB",
            estimated,
            limits.max_decode_bytes,
        )


def _mib(size: int) -> str:
    return f"{size / MIB:.0f}" if size >= 10 * MIB else f"{size / MIB:.1f}"


def read_header(body: bytes) -> ImageHeader | None:
    """The header of a PNG, JPEG or DICOM body (kind from its magic bytes), or None when it cannot be read
    cheaply or is not one of them. Never raises; reads only the header."""
    try:
        if body.startswith(_PNG_SIGNATURE):
            return png_header(body)
        if body.startswith(b"\xff\xd8\xff"):
            return jpeg_header(body)
        return dicom_header(body)
    except (struct.error, ValueError, IndexError):
        return None


# ---- PNG (ISO/IEC 15948, 11.2.2 IHDR; 5.4 chunk naming) ------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type → (samples, allowed bit depths, layout stem)
_PNG_COLOUR_TYPES = {
    0: (1, (1, 2, 4, 8, 16), "gray"),
    2: (3, (8, 16), "rgb"),
    3: (1, (1, 2, 4, 8), "palette"),
    4: (2, (8, 16), "gray-alpha"),
    6: (4, (8, 16), "rgba"),
}


def png_header(body: bytes) -> ImageHeader | None:
    """IHDR: the first chunk, at a fixed offset. None when it is missing or invalid (the decoder says why)."""
    if body[12:16] != b"IHDR" or len(body) < 29:
        return None
    width, height, depth, colour_type = struct.unpack_from(">IIBB", body, 16)
    known = _PNG_COLOUR_TYPES.get(colour_type)
    if known is None or depth not in known[1] or width == 0 or height == 0:
        return None
    samples, _, stem = known
    if depth == 16:
        # 16-bit gray+alpha: Pillow keeps 4 bytes per pixel for 4 decoded, like 8-bit RGBA.
        layout = {"gray": "png-gray16", "rgb": "png-rgb16", "rgba": "png-rgba16", "gray-alpha": "png-rgba"}[stem]
    else:
        layout = f"png-{stem}"
    return ImageHeader("png", width, height, 1, samples, 2 if depth == 16 else 1, layout)


def check_png_chunks(body: bytes, limits: DecodeLimits) -> None:
    """Walk the chunk headers (no data is read) and refuse a PNG with more chunks, or more or larger ancillary
    chunks, than ``limits`` allow. The walk ends at IEND, or at a chunk that does not fit in the body or has no
    valid type (the decoder then reports what is wrong)."""
    offset = len(_PNG_SIGNATURE)
    chunks = ancillary = ancillary_bytes = 0
    end = len(body)
    while offset + 12 <= end:
        length, kind = struct.unpack_from(">I4s", body, offset)
        following = offset + 12 + length
        if following > end or not kind.isalpha():
            return
        chunks += 1
        if chunks > limits.max_png_chunks:
            raise TooLarge(f"the PNG has more than {limits.max_png_chunks} chunks")
        if kind[0] & 0x20:  # lower-case first letter: ancillary (ISO/IEC 15948, 5.4)
            ancillary += 1
            ancillary_bytes += length
            if ancillary > limits.max_png_ancillary_chunks:
                raise TooLarge(f"the PNG has more than {limits.max_png_ancillary_chunks} ancillary (metadata) chunks")
            if ancillary_bytes > limits.max_png_ancillary_bytes:
                raise TooLarge(
                    f"the PNG's ancillary (metadata) chunks hold more than {limits.max_png_ancillary_bytes} bytes"
                )
        if kind == b"IEND":
            return
        offset = following


# ---- JPEG (ITU T.81 B.1.1.3 markers, B.2.2 frame header, B.2.3 scan header) -----------------------------------

# Segments read before giving up on finding the frame header (APPn, COM, DQT, DHT, DRI: a real file has < 30).
_MAX_JPEG_SEGMENTS = 512
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _jpeg_frame(body: bytes) -> tuple[int, int, int, int, int] | None:
    """(offset of the SOF segment, marker, height, width, components) of the first frame header, or None."""
    offset = 2
    segments = 0
    end = len(body)
    while offset + 4 <= end and segments < _MAX_JPEG_SEGMENTS:
        if body[offset] != 0xFF:
            return None
        marker = body[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE_MARKERS:
            offset += 2
            continue
        segments += 1
        (length,) = struct.unpack_from(">H", body, offset + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if offset + 10 > end:
                return None
            height, width, components = struct.unpack_from(">HHB", body, offset + 5)
            return offset, marker, height, width, components
        if marker in (0xDA, 0xD9):  # a scan or the end before any frame header
            return None
        offset += 2 + length
    return None


def jpeg_header(body: bytes) -> ImageHeader | None:
    frame = _jpeg_frame(body)
    if frame is None:
        return None
    _, marker, height, width, components = frame
    if width == 0 or height == 0 or components not in (1, 3, 4):
        return None  # height 0 (defined later by DNL) or odd component counts: the decoder decides
    layout = "jpeg-gray" if components == 1 else "jpeg-colour"
    if marker in _PROGRESSIVE_SOF:
        layout += "-progressive"
    return ImageHeader("jpeg", width, height, 1, components, 1, layout)


def check_jpeg_scans(body: bytes, limits: DecodeLimits) -> None:
    """Refuse a JPEG with more scans (SOS markers after the frame header) than ``limits.max_jpeg_scans``.
    Entropy-coded data never holds 0xFF 0xDA (a 0xFF there is followed by 0x00 or a restart marker), so
    counting the byte pair counts the scans."""
    frame = _jpeg_frame(body)
    start = frame[0] if frame is not None else 2
    scans = body.count(b"\xff\xda", start)
    if scans > limits.max_jpeg_scans:
        raise TooLarge(f"the JPEG has {scans} scans; the limit is {limits.max_jpeg_scans}")


# ---- DICOM (PS3.5 7.1 data elements, 7.5 sequences; PS3.10 7.1 File Meta) ------------------------------------

# Elements (nested ones included) visited before giving up: a real header has a few hundred before group 0028.
_MAX_DICOM_ELEMENTS = 20_000
_MAX_DICOM_DEPTH = 16
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_WANTED = {0x0002: "samples", 0x0004: "photometric", 0x0008: "frames", 0x0010: "rows", 0x0011: "columns"}
_WANTED[0x0100] = "bits_allocated"
# Top-level routing attributes (General Series, DX Positioning): Modality, Series Description, Body Part
# Examined, View Position.
_ROUTING = {(0x0008, 0x0060): "modality", (0x0008, 0x103E): "series_description"}
_ROUTING[(0x0018, 0x0015)] = "body_part_examined"
_ROUTING[(0x0018, 0x5101)] = "view_position"


class _Unreadable(Exception):
    """The walk met something it does not handle: leave the file to pydicom."""


@dataclass
class _Walk:
    body: bytes
    implicit: bool
    little: bool
    visited: int = 0

    def element(self, offset: int, implicit: bool) -> tuple[int, int, bytes, int, int]:
        """(group, element, VR, value offset, length) of the element header at ``offset``."""
        body = self.body
        self.visited += 1
        if self.visited > _MAX_DICOM_ELEMENTS or offset + 8 > len(body):
            raise _Unreadable
        order = "<" if self.little else ">"
        group, element = struct.unpack_from(order + "HH", body, offset)
        if group == 0xFFFE or implicit:
            (length,) = struct.unpack_from(order + "I", body, offset + 4)
            return group, element, b"", offset + 8, length
        vr = body[offset + 4 : offset + 6]
        if not (vr.isalpha() and vr.isupper()):
            raise _Unreadable
        if vr in _LONG_VRS:
            if offset + 12 > len(body):
                raise _Unreadable
            (length,) = struct.unpack_from(order + "I", body, offset + 8)
            return group, element, vr, offset + 12, length
        (length,) = struct.unpack_from(order + "H", body, offset + 6)
        return group, element, vr, offset + 8, length

    def skip_undefined(self, offset: int, implicit: bool, depth: int) -> int:
        """The offset after an undefined-length sequence whose first item header is at ``offset``."""
        if depth > _MAX_DICOM_DEPTH:
            raise _Unreadable
        while True:
            group, element, _, value_at, length = self.element(offset, implicit=True)
            if (group, element) == _SEQUENCE_END:
                return value_at
            if (group, element) != _ITEM:
                raise _Unreadable
            if length != _UNDEFINED:
                offset = value_at + length
                continue
            offset = value_at
            while True:  # the item's elements up to its delimiter
                group, element, vr, value_at, length = self.element(offset, implicit)
                if (group, element) == _ITEM_END:
                    offset = value_at
                    break
                if length == _UNDEFINED:
                    # An undefined-length UN holds implicit VR little endian (PS3.5 6.2.2).
                    offset = self.skip_undefined(value_at, implicit or vr == b"UN", depth + 1)
                else:
                    offset = value_at + length


def dicom_header(body: bytes) -> ImageHeader | None:
    """Rows, Columns, Samples per Pixel, Number of Frames, Bits Allocated and Photometric Interpretation from the
    top-level elements before group 0028 ends. None for what it does not read (a Deflated dataset, a value it
    cannot parse, too many elements): the decoder then checks the budget from pydicom's parse."""
    from models.imaging.decode import _VR_CODES, _looks_like_raw_dataset, _scan_file_meta  # the decoder's own

    offset, syntax = _scan_file_meta(body)
    if syntax is None:
        if offset == 0 and not _looks_like_raw_dataset(body[:16], len(body)):
            return None
        implicit = body[offset + 4 : offset + 6] not in _VR_CODES
        little = True
    else:
        syntax_uid = dicom_uid.UID(syntax)
        if syntax_uid == dicom_uid.DeflatedExplicitVRLittleEndian:
            return None
        implicit = syntax_uid == dicom_uid.ImplicitVRLittleEndian
        little = syntax_uid != dicom_uid.ExplicitVRBigEndian
    walk = _Walk(body, implicit, little)
    found: dict[str, int | str] = {}
    routing: dict[str, str] = {}
    order = "<" if little else ">"
    try:
        while offset + 8 <= len(body):
            group, element, vr, value_at, length = walk.element(offset, implicit)
            if group > 0x0028:
                break
            if length == _UNDEFINED:
                offset = walk.skip_undefined(value_at, implicit or vr == b"UN", 1)
                continue
            if (group, element) in _ROUTING:
                # Latin-1 reads every byte: the text only has to match a pattern, and a value in another
                # character set that reads differently is routed again from the decoder's reading.
                text = body[value_at : value_at + length].decode("latin-1").strip(" \x00")
                if text:
                    routing[_ROUTING[(group, element)]] = text
            if group == 0x0028 and element in _WANTED:
                value = body[value_at : value_at + length]
                name = _WANTED[element]
                if name == "photometric":
                    found[name] = value.decode("ascii", "replace").strip(" \x00").upper()
                elif name == "frames":
                    found[name] = int(value.decode("ascii").strip(" \x00") or "1")
                elif len(value) >= 2:
                    found[name] = struct.unpack_from(order + "H", value)[0]
            offset = value_at + length
    except (_Unreadable, UnicodeDecodeError, ValueError):
        return None
    rows, columns = found.get("rows"), found.get("columns")
    bits = found.get("bits_allocated", 16)
    frames = found.get("frames", 1)
    samples = found.get("samples", 1)
    if not all(isinstance(v, int) for v in (rows, columns, bits, frames, samples)):
        return None
    assert isinstance(rows, int) and isinstance(columns, int) and isinstance(bits, int)  # for the type checker
    assert isinstance(frames, int) and isinstance(samples, int)
    if rows <= 0 or columns <= 0 or frames < 0 or samples < 1:
        return None
    header = dicom_image_header(rows, columns, frames, samples, bits, str(found.get("photometric", "MONOCHROME2")))
    return dataclasses.replace(
        header,
        modality=routing.get("modality"),
        body_part_examined=routing.get("body_part_examined"),
        series_description=routing.get("series_description"),
        view_position=routing.get("view_position"),
    )


def dicom_image_header(
    rows: int, columns: int, frames: int, samples: int, bits_allocated: int, photometric: str
) -> ImageHeader:
    """The header of a DICOM image from its Image Pixel module values (the decoder's own, or read above)."""
    bytes_per_sample = 4 if bits_allocated > 16 else 2 if bits_allocated > 8 else 1
    if photometric.startswith("MONOCHROME"):
        stem = "mono"
    else:  # colour and palette output at most 16 bits per sample
        stem = "palette" if photometric == "PALETTE COLOR" else "colour"
        bytes_per_sample = min(bytes_per_sample, 2)
    layout = f"dicom-{stem}{8 * bytes_per_sample}"
    return ImageHeader("dicom", columns, rows, max(frames, 1), samples, bytes_per_sample, layout)
