"""FastAPI's side of the error family: every error the app answers leaves as ``{"error", "detail", "request_id"}``.

Handlers here replace FastAPI's defaults (shaped ``{"detail": ...}``) so that a 404, a 405, a query-parameter
validation failure and an unexpected exception all look the same to a client, and none of them ever carries a
stack trace. The error classes themselves are ``service.errors``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ApiError, error_body


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
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.detail, exc.headers)

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
