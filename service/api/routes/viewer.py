"""The radiographer viewer: GET / (the page), GET /viewer/<asset>, and POST /render.

The page is plain HTML/CSS/JS under ``service/static/viewer/`` (no build step). POST /render answers the
8-bit display PNG of an upload, made from the same decoded pixels /assess feeds the model (same reader,
same limits, decoded in the same thread pool off the event loop), so a DICOM's heatmap and marker line up
with what is shown. Only the files listed in ``ASSETS`` are served; nothing else under the folder is
reachable.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from models.imaging import BadImage, DecodeLimits, decode_image, to_display_png
from service.api.deps import ApiKeyDep, AssessorDep, SettingsDep
from service.api.upload import read_upload
from service.errors import ApiError
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


def _display_png(body: bytes, content_type: str | None, limits: DecodeLimits) -> tuple[bytes, int, int]:
    decoded = decode_image(body, content_type, limits)
    if decoded.number_of_frames == 0:  # /assess answers it unassessable (no_frames); there is nothing to show
        raise BadImage("the DICOM declares Number of Frames 0: it holds no frame to display")
    return to_display_png(decoded), decoded.width, decoded.height


@router.post(
    "/render",
    summary="The 8-bit display PNG of an upload, as the model sees it",
    description=(
        "Same body and errors as POST /assess (raw DICOM/PNG/JPEG bytes or multipart field `file`). Answers "
        "an 8-bit grayscale PNG of the decoded pixels /assess would feed the model, at the original size; "
        "the viewer shows DICOM through it so the heatmap and the marker line up."
    ),
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **{s: {"model": ErrorResponse} for s in (400, 401, 413, 415)}},
)
async def render(request: Request, assessor: AssessorDep, settings: SettingsDep, _auth: ApiKeyDep) -> Response:
    upload = await read_upload(request, settings.max_body_bytes)
    png, width, height = await assessor.decode_pool.run(_display_png, upload.body, upload.content_type, assessor.limits)
    return Response(
        png,
        media_type="image/png",
        headers={"X-Image-Width": str(width), "X-Image-Height": str(height), "Cache-Control": "no-store"},
    )
