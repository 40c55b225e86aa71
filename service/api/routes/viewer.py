"""The radiographer viewer: GET / (the page), GET /viewer/<asset>, and POST /render.

The page is plain HTML/CSS/JS under ``service/static/viewer/`` (no build step). POST /render answers the
8-bit display PNG of an upload, made from the same decoded pixels /assess feeds the model (same reader,
same limits, decoded in the same decode processes off the event loop), so a DICOM's heatmap and marker line up
with what is shown. Only the files listed in ``ASSETS`` are served; nothing else under the folder is
reachable.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from service.api.deps import AssessCaller, AssessorDep, SettingsDep
from service.api.upload import read_upload, wait_for_disconnect
from service.errors import ApiError
from service.ingest.decode_pool import DecodeResult
from service.schemas import ErrorResponse

router = APIRouter(tags=["viewer"])

STATIC_DIR = Path(__file__).resolve().parents[2] / "static" / "viewer"
ASSETS = {
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; say so to the browser so an injected script could not either.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Assets change with each release and are tiny; always revalidate so a new version is never mixed.
    "Cache-Control": "no-cache",
}


class AssetNotFound(ApiError):
    status, code = 404, "not_found"


@router.get("/", include_in_schema=False)
def viewer_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/viewer/{name}", include_in_schema=False)
def viewer_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise AssetNotFound(f"no such viewer file: {name}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=PAGE_HEADERS)


@router.post(
    "/render",
    summary="The 8-bit display PNG of an upload, as the model sees it",
    description=(
        "Same body and errors as POST /assess (raw DICOM/PNG/JPEG bytes or multipart field `file`). Answers "
        "an 8-bit grayscale PNG of the decoded pixels /assess would feed the model, at the original size; "
        "the viewer shows DICOM through it so the heatmap and the marker line up. A multi-frame DICOM's frames "
        "are stacked top to bottom in the one PNG: X-Image-Width and X-Image-Height give one frame's size, "
        "X-Image-Frames their count."
    ),
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        **{s: {"model": ErrorResponse} for s in (400, 401, 403, 413, 415, 503, 504)},
    },
)
async def render(request: Request, assessor: AssessorDep, settings: SettingsDep, _caller: AssessCaller) -> Response:
    deadline = assessor.deadline_from(time.monotonic())
    upload = await read_upload(request, settings.max_body_bytes)
    disconnected = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        # Decoded and drawn in a decode process (models.imaging.to_display_png): only the PNG comes back.
        result: DecodeResult = await assessor.decode_pool.decode(upload, deadline, disconnected, display=True)
    finally:
        disconnected.cancel()
    png, width, height = result.display_png, result.width, result.height
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Image-Width": str(width),
            "X-Image-Height": str(height),
            "X-Image-Frames": str(result.frames),
            "Cache-Control": "no-store",
        },
    )
