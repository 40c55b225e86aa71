"""Reading an /assess upload from the HTTP request: size limit first, then raw body or multipart ``file``.

The body is read by this module, not by Starlette's ``request.body()``, so the size limit holds while
streaming: a declared ``Content-Length`` over the limit is refused before a byte is read, and a chunked body
is cut off as soon as it passes the limit, and the whole body has to arrive within
NORMGATE_BODY_READ_TIMEOUT_S (408 ``request_timeout`` otherwise). Multipart bodies are parsed from the bytes already read (the same
limit covers them).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from models.imaging import media_type_of
from service.errors import BadImage, BodyReadTimeout, TooLarge
from service.ingest.upload import Upload

MULTIPART = "multipart/form-data"
FILE_FIELD = "file"


# Used when the app carries no settings (a bare router in a test); the service always has its own value.
DEFAULT_BODY_READ_TIMEOUT_S = 30.0


def body_read_timeout_of(request: Request) -> float:
    settings = getattr(request.app.state, "settings", None)
    return float(getattr(settings, "body_read_timeout_s", DEFAULT_BODY_READ_TIMEOUT_S))


async def read_limited_body(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The whole body, refused early when over ``max_bytes`` and cut off when it takes longer than
    ``timeout_s`` in all (default NORMGATE_BODY_READ_TIMEOUT_S): a per-chunk timeout would let a client that
    sends one byte every few seconds hold a connection and a decode slot forever."""
    timeout_s = body_read_timeout_of(request) if timeout_s is None else timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_limited_body(request, max_bytes)
    except TimeoutError:
        raise BodyReadTimeout(f"the request body did not arrive within {timeout_s:g} s") from None


async def _read_limited_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise BadImage(f"Content-Length {declared!r} is not a number") from None
        if declared_bytes > max_bytes:
            raise TooLarge(f"the body is {declared_bytes} bytes; the limit is {max_bytes} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise TooLarge(f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _single_file_from_multipart(request: Request, body: bytes) -> Upload:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # never: the form parser stops after the last chunk
        return {"type": "http.disconnect"}

    replayed = Request(request.scope, replay)
    try:
        form = await replayed.form(max_files=1, max_fields=16)
    except HTTPException as exc:
        raise BadImage(f"malformed multipart body: {exc.detail}") from None
    try:
        files = [v for k, v in form.multi_items() if k == FILE_FIELD and isinstance(v, UploadFile)]
        if len(files) != 1:
            raise BadImage(f"a multipart body needs exactly one file field named {FILE_FIELD!r}")
        data = await files[0].read()
        part_type = media_type_of(files[0].content_type)
    finally:
        await form.close()
    # A browser sends application/octet-stream for unknown extensions; let the decoder look at the bytes.
    if part_type == "application/octet-stream":
        part_type = None
    return Upload(body=data, content_type=part_type)


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The uploaded image bytes and their declared media type, raw or from a multipart ``file`` field."""
    content_type = media_type_of(request.headers.get("content-type"))
    body = await read_limited_body(request, max_bytes)
    if content_type == MULTIPART:
        return await _single_file_from_multipart(request, body)
    return Upload(body=body, content_type=content_type)


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (call only after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
