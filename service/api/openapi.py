"""The OpenAPI document says what the service really answers (checked by tests/service/api/test_schema_fuzz.py).

FastAPI documents its own 422 body (``{"detail": [...]}``) for every operation with parameters, but the
service answers every error as ``{"error", "detail", "request_id"}`` (service/errors.py; docs/api.md,
"Errors"). And some answers can come from any operation, not from its route: 500 ``internal`` (the request
middleware), 503 ``overloaded`` (the NORMGATE_MAX_CONCURRENT_REQUESTS cap, before routing), and for operations
that read a body 408 ``request_timeout`` and 413 ``too_large``. This fills those in once, for every operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_FASTAPI_422 = "#/components/schemas/HTTPValidationError"
# Paths the concurrency cap never refuses (service.app.RequestContextMiddleware.UNLIMITED_PATHS).
_PROBES = {"/healthz", "/readyz", "/metrics"}

_ALWAYS = {"500": "internal: unexpected error; the body has the request_id to quote"}
_CAPPED = {"503": "overloaded: too many requests in progress (Retry-After), or not_ready"}
_WITH_BODY = {
    "408": "request_timeout: the body did not arrive within NORMGATE_BODY_READ_TIMEOUT_S",
    "413": "too_large: the body is over the limit",
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": dict(_ERROR_REF)}}}


def document_error_responses(schema: dict[str, Any]) -> dict[str, Any]:
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            validation = responses.get("422")
            if validation is not None:
                content = validation.get("content", {}).get("application/json", {})
                if content.get("schema", {}).get("$ref") == _FASTAPI_422:
                    content["schema"] = dict(_ERROR_REF)
                    validation["description"] = "bad_parameter: a parameter is missing or invalid"
            extra = dict(_ALWAYS)
            if path not in _PROBES:
                extra.update(_CAPPED)
            if "requestBody" in operation:
                extra.update(_WITH_BODY)
            for status, description in extra.items():
                responses.setdefault(status, _error_response(description))
    components = schema.get("components", {}).get("schemas", {})
    text = repr(schema.get("paths"))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}'" not in text:
            components.pop(name, None)
    return schema


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and /openapi.json) return the completed document."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_error_responses(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
