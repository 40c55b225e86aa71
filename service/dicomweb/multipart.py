"""DICOMweb STOW-RS plumbing: the multipart/related request body in, the Store Instances Response out.

Nothing here knows about models or HTTP frameworks; the route (``service/api/routes/dicomweb.py``) glues it to the
assessor. Sources:

* DICOM PS3.18 §10.5 (Store Transaction): request ``multipart/related; type="application/dicom"``, one
  instance per part; response codes 200 (every instance stored), 202 (some failed, or warnings), 409 (every
  instance failed), 415 (unsupported media type); response body the Store Instances Response Module
  (PS3.18 Table 10.5.3-1) in the DICOM JSON Model (PS3.18 Annex F): Retrieve URL (0008,1190), Failed SOP
  Sequence (0008,1198) with Failure Reason (0008,1197), Referenced SOP Sequence (0008,1199).
* Failure Reason values are the C-STORE status codes of PS3.4 Annex B.2.3 / PS3.7 Annex C: 0xA7xx Refused:
  Out of Resources, 0xA9xx Error: Data Set Does Not Match SOP Class, 0xCxxx Error: Cannot Understand, 0x0122
  Refused: SOP Class Not Supported, 0x0110 Processing Failure. PS3.18 §10.5.3 uses 0xA900 for an instance
  whose Study Instance UID differs from the one in the request URL.
* RFC 2046 §5.1.1 (multipart body: ``--boundary`` delimiters, optional preamble/epilogue, close delimiter
  ``--boundary--``) and RFC 2387 (multipart/related and its ``type`` parameter).

The parser works on a body whose total size the caller has already bounded; it also bounds the number of
parts and refuses anything malformed with :class:`StowRequestError` (a 400/415 JSON error, docs/api.md),
never another exception.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from models.imaging import DICOM_MEDIA_TYPE, media_type_of
from service.errors import ApiError, BadImage, UnsupportedMediaType

__all__ = [
    "DICOM_JSON",
    "DICOM_MEDIA_TYPE",
    "MULTIPART_RELATED",
    "FailureReason",
    "InstanceIds",
    "Part",
    "StowOutcome",
    "StowRequestError",
    "build_multipart_related",
    "parse_multipart_related",
    "read_instance_ids",
    "store_instances_response",
    "stow_status",
]

MULTIPART_RELATED = "multipart/related"
DICOM_JSON = "application/dicom+json"
MAX_BOUNDARY_LENGTH = 200

# Tags of the Store Instances Response Module (PS3.18 Table 10.5.3-1) and their items, as DICOM JSON keys.
TAG_RETRIEVE_URL = "00081190"
TAG_FAILED_SOP_SEQUENCE = "00081198"
TAG_REFERENCED_SOP_SEQUENCE = "00081199"
TAG_FAILURE_REASON = "00081197"
TAG_WARNING_REASON = "00081196"
TAG_REFERENCED_SOP_CLASS_UID = "00081150"
TAG_REFERENCED_SOP_INSTANCE_UID = "00081155"


class FailureReason:
    """Failure Reason (0008,1197) values NormGate sends (PS3.4 Annex B.2.3 status codes)."""

    PROCESSING_FAILURE = 0x0110  # the model failed on the instance's batch (a 500 for /assess)
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # not an image: no Pixel Data (SR, presentation state, …)
    OUT_OF_RESOURCES = 0xA700  # queue full, not ready, deadline passed, image over the size limits
    DATA_SET_MISMATCH = 0xA900  # Study Instance UID differs from the one in the request URL
    CANNOT_UNDERSTAND = 0xC000  # not a decodable DICOM image (bad bytes, unsupported transfer syntax, …)


class StowRequestError(ApiError):
    """The request as a whole is unusable (not individual instances): a JSON error (docs/api.md, "Errors")."""


def _bad_request(detail: str) -> BadImage:
    return BadImage(f"malformed STOW-RS request: {detail}")


# ---------------------------------------------------------------------------------------------------------
# Request: Content-Type header and multipart/related body
# ---------------------------------------------------------------------------------------------------------


def _split_parameters(header_value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d;e"`` → (``type/subtype`` lower case, {a: b, c: "d;e"}), quotes honoured."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in header_value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    media_type = pieces[0].strip().lower()
    parameters: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if sep:
            parameters[name.strip().lower()] = value.strip()
    return media_type, parameters


def stow_boundary(content_type: str | None) -> str:
    """The multipart boundary of a STOW-RS request, or a 415/400 error.

    PS3.18 §10.5.1.2: the request is ``multipart/related`` with ``type="application/dicom"`` (binary instances).
    A missing ``type`` is accepted (every part then has to say application/dicom itself); any other ``type``
    (the XML/JSON metadata + bulk data forms) is not supported.
    """
    media_type, parameters = _split_parameters(content_type or "")
    if media_type != MULTIPART_RELATED:
        raise UnsupportedMediaType(
            f'STOW-RS needs Content-Type multipart/related; type="application/dicom", not {media_type or "none"!r}'
        )
    root_type = parameters.get("type", DICOM_MEDIA_TYPE).lower()
    if root_type != DICOM_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f'multipart/related type {root_type!r} is not supported; send binary instances (type="{DICOM_MEDIA_TYPE}")'
        )
    boundary = parameters.get("boundary", "")
    # RFC 2046 §5.1.1 says 1–70 characters, but Orthanc's DICOMweb client sends 73 (two UUIDs); a looser
    # bound still keeps the delimiter search cheap.
    if not 1 <= len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise _bad_request(f"the Content-Type has no usable boundary parameter (1–{MAX_BOUNDARY_LENGTH} characters)")
    return boundary


@dataclass(frozen=True)
class Part:
    """One body part: its media type (lower case, no parameters; None when absent) and its bytes."""

    content_type: str | None
    body: bytes
    index: int  # 0-based position in the request, for error messages


def parse_multipart_related(body: bytes, boundary: str, max_parts: int) -> list[Part]:
    """Split a multipart body into its parts (RFC 2046 §5.1.1): preamble and epilogue ignored, headers parsed
    for Content-Type only. At least one part, at most ``max_parts`` (413 beyond), and a close delimiter."""
    delimiter = b"--" + boundary.encode("latin-1")
    # The first delimiter may open the body (no CRLF before it); later ones always follow a CRLF.
    if body.startswith(delimiter):
        position = 0
    else:
        position = body.find(b"\r\n" + delimiter)
        if position < 0:
            raise _bad_request("the body does not contain the boundary given in the Content-Type")
        position += 2
    parts: list[Part] = []
    separator = b"\r\n" + delimiter
    while True:
        after = position + len(delimiter)
        if body[after : after + 2] == b"--":
            break  # close delimiter
        line_end = body.find(b"\r\n", after)
        if line_end < 0 or body[after:line_end].strip(b" \t"):
            raise _bad_request("a boundary line is not followed by CRLF (or the body ends early)")
        headers_end = body.find(b"\r\n\r\n", line_end)
        if body[line_end : line_end + 4] == b"\r\n\r\n":
            headers_end = line_end  # a part with no headers at all
        if headers_end < 0:
            raise _bad_request(f"part {len(parts) + 1} has no blank line after its headers")
        next_delimiter = body.find(separator, headers_end + 4)
        if next_delimiter < 0:
            raise _bad_request(f"part {len(parts) + 1} is not closed by a boundary (truncated body?)")
        if len(parts) >= max_parts:
            raise StowTooManyParts(
                f"the request has more than {max_parts} parts; send at most {max_parts} instances per request"
            )
        headers = _parse_part_headers(body[line_end + 2 : headers_end])
        parts.append(
            Part(
                content_type=headers.get("content-type"), body=body[headers_end + 4 : next_delimiter], index=len(parts)
            )
        )
        position = next_delimiter + 2
    if not parts:
        raise _bad_request("the multipart body has no parts")
    return parts


class StowTooManyParts(StowRequestError):
    status, code = 413, "too_large"


def _parse_part_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            raise _bad_request("a part header line has no colon")
        text = value.decode("latin-1").strip()
        key = name.decode("latin-1").strip().lower()
        headers[key] = (media_type_of(text) or "") if key == "content-type" else text
    return headers


def build_multipart_related(instances: list[bytes], boundary: str) -> tuple[bytes, str]:
    """(body, Content-Type) of a STOW-RS request carrying ``instances`` (Part 10 files); the inverse of
    :func:`parse_multipart_related`, used by the push client and the tests."""
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for instance in instances:
        if delimiter in instance:
            raise ValueError("the boundary occurs inside an instance; pick another boundary")
        chunks += [delimiter, b"\r\nContent-Type: application/dicom\r\n\r\n", instance, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    content_type = f'{MULTIPART_RELATED}; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}'
    return b"".join(chunks), content_type


# ---------------------------------------------------------------------------------------------------------
# Instance identifiers, read before any pixel work
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceIds:
    """What the Store Instances Response needs to name an instance, plus whether it carries pixels."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    has_pixel_data: bool = False
    readable: bool = False  # False: not a DICOM dataset pydicom could walk


_IDENTIFYING_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
]
_CONTROL_FLOW = (KeyboardInterrupt, SystemExit, GeneratorExit)


def read_instance_ids(body: bytes) -> InstanceIds:
    """The SOP Class/Instance and Study UIDs of a Part 10 file (or a raw dataset), without decoding pixels.

    Only these tags are kept (``specific_tags``) and long values stay deferred, so hostile lengths cost
    nothing; any failure gives an ``InstanceIds`` with ``readable=False`` — the decoder then says why.
    """
    import pydicom  # local: keeps this module importable without pydicom for the pure-protocol tests

    try:
        ds = pydicom.dcmread(io.BytesIO(body), force=True, specific_tags=_IDENTIFYING_TAGS, defer_size=1024)
        file_meta = ds.get("file_meta") or {}
        uids = {
            "sop_class_uid": _uid(ds, "SOPClassUID") or _uid(file_meta, "MediaStorageSOPClassUID"),
            "sop_instance_uid": _uid(ds, "SOPInstanceUID") or _uid(file_meta, "MediaStorageSOPInstanceUID"),
            "study_instance_uid": _uid(ds, "StudyInstanceUID"),
            "series_instance_uid": _uid(ds, "SeriesInstanceUID"),
        }
        # force=True turns any bytes into *some* dataset; only a valid UID shows it is really DICOM.
        return InstanceIds(
            **uids,
            has_pixel_data=any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
            readable=any(uids.values()),
        )
    except _CONTROL_FLOW:
        raise
    except BaseException:
        return InstanceIds()


def _uid(ds: Any, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value is as good as absent here
        return None
    text = str(value).strip().rstrip("\0") if value else ""
    # A UID is at most 64 characters of digits and dots (PS3.5 9.1); anything else is not echoed back.
    if not text or len(text) > 64 or any(c not in "0123456789." for c in text):
        return None
    return text


# ---------------------------------------------------------------------------------------------------------
# Response: the Store Instances Response Module in DICOM JSON
# ---------------------------------------------------------------------------------------------------------


@dataclass
class StowOutcome:
    """What happened to one received instance."""

    index: int
    ids: InstanceIds
    failure_reason: int | None = None  # None: stored (assessed)
    error: str | None = None  # error code of the failure (docs/api.md), e.g. bad_image
    detail: str | None = None  # a sentence for a person (never patient data)
    retrieve_url: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # NormGate's own results, for Accept: application/json

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def store_instances_response(outcomes: list[StowOutcome], study_retrieve_url: str | None) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-1) as a DICOM JSON object.

    Referenced SOP Sequence lists the stored instances, Failed SOP Sequence the others with their Failure
    Reason; an instance whose UIDs could not be read is listed with empty UI values (DICOM JSON allows an
    attribute without "Value"). Retrieve URL is sent only where something can actually be retrieved.
    """
    response: dict[str, Any] = {}
    if study_retrieve_url:
        response[TAG_RETRIEVE_URL] = {"vr": "UR", "Value": [study_retrieve_url]}
    failed = [o for o in outcomes if not o.stored]
    stored = [o for o in outcomes if o.stored]
    if failed:
        response[TAG_FAILED_SOP_SEQUENCE] = {
            "vr": "SQ",
            "Value": [
                {
                    TAG_REFERENCED_SOP_CLASS_UID: _ui(o.ids.sop_class_uid),
                    TAG_REFERENCED_SOP_INSTANCE_UID: _ui(o.ids.sop_instance_uid),
                    TAG_FAILURE_REASON: {"vr": "US", "Value": [o.failure_reason]},
                }
                for o in failed
            ],
        }
    if stored:
        items = []
        for o in stored:
            item = {
                TAG_REFERENCED_SOP_CLASS_UID: _ui(o.ids.sop_class_uid),
                TAG_REFERENCED_SOP_INSTANCE_UID: _ui(o.ids.sop_instance_uid),
            }
            if o.retrieve_url:
                item[TAG_RETRIEVE_URL] = {"vr": "UR", "Value": [o.retrieve_url]}
            items.append(item)
        response[TAG_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": items}
    return response


def stow_status(outcomes: list[StowOutcome]) -> int:
    """PS3.18 §10.5.3: 200 all stored, 202 some failed, 409 all failed."""
    stored = sum(o.stored for o in outcomes)
    if stored == len(outcomes):
        return 200
    return 202 if stored else 409
