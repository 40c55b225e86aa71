"""Every error the API answers with, as SPEC §3 JSON: ``{"error": code, "detail": sentence}``.

Handlers here replace FastAPI's defaults (HTML-free already, but shaped ``{"detail": ...}``) so that a 404, a
405, a query-parameter validation failure and an unexpected exception all look the same to a client, and none
of them ever carries a stack trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("normgate.errors")


class ApiError(Exception):
    """An error with its HTTP status, SPEC §3 code and a sentence for the client."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadParameter(ApiError):
    status, code = 422, "bad_parameter"


class BadImageRequest(ApiError):
    """The body is not a usable upload (malformed multipart, no file field, empty)."""

    status, code = 400, "bad_image"


class TooLarge(ApiError):
    status, code = 413, "too_large"


class BodyReadTimeout(ApiError):
    """The body did not arrive within NORMGATE_BODY_READ_TIMEOUT_S (a slow or stalled client, or slowloris)."""

    status, code = 408, "request_timeout"

    def __init__(self, detail: str) -> None:
        # The rest of the body may still be on its way: the connection cannot carry another request.
        super().__init__(detail, headers={"Connection": "close"})


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Overloaded(ApiError):
    status, code = 503, "overloaded"


class NotReady(ApiError):
    status, code = 503, "not_ready"


class RequestTimeout(ApiError):
    status, code = 504, "timeout"


class InternalError(ApiError):
    status, code = 500, "internal"


INTERNAL_DETAIL = "internal error while handling the request; quote the request_id when reporting it"


def error_body(code: str, detail: str, request_id: str | None = None) -> dict[str, str]:
    body = {"error": code, "detail": detail}
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(
    request: Request, status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    request.state.error_code = code  # read by the request middleware for normgate_rejected_total
    return JSONResponse(error_body(code, detail, request_id), status_code=status, headers=headers)


def _validation_sentence(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid value')}")
    return "invalid request parameter(s): " + "; ".join(parts)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    413: "too_large",
    415: "unsupported_media_type",
    422: "bad_parameter",
    503: "not_ready",
}


def install_error_handlers(app: FastAPI) -> None:
    # The ingestion module defines its own error family (code, status, detail); it maps 1:1 onto SPEC §3.
    from service.ingest import IngestError

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(IngestError)
    async def _ingest_error(request: Request, exc: IngestError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "bad_parameter", _validation_sentence(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(request, exc.status_code, code, detail, getattr(exc, "headers", None))
