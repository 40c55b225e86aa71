"""GET /docs: the interactive API documentation, working offline.

FastAPI's own /docs page loads Swagger UI from a CDN, which a hospital network without internet access cannot
reach. This page is FastAPI's, pointed at Swagger UI's files from the pinned ``swagger-ui-bundle`` package,
served by the service itself under /docs/; /redoc (CDN-only) is not offered.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from service.errors import ApiError

router = APIRouter(include_in_schema=False)

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


class DocsAssetNotFound(ApiError):
    status, code = 404, "not_found"


@router.get("/docs")
def docs_page() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="NormGate API",
        swagger_js_url="/docs/swagger-ui-bundle.js",
        swagger_css_url="/docs/swagger-ui.css",
        swagger_favicon_url="/docs/favicon-32x32.png",
    )


@router.get("/docs/{name}")
def docs_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise DocsAssetNotFound(f"no such documentation file: {name}")
    # The bundle's files change only with its pinned version: let browsers keep them for a day.
    return FileResponse(
        swagger_ui_path / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )
