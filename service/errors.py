"""The service's one error family: every refusal is an :class:`ApiError` with its HTTP status, its code and a
sentence, answered as JSON ``{"error": code, "detail": sentence, "request_id": …}`` (docs/api.md, "Errors").

Plain Python (no FastAPI): the serving, ingest, DICOMweb and evaluation layers raise these; ``service.api.errors``
turns them into responses. The image decoder of the library raises :class:`models.imaging.ImageError` (a code,
no HTTP); :func:`from_image_error` is the one place that gives each of its codes a status.
"""

from __future__ import annotations

from models.imaging import ImageError


class ApiError(Exception):
    """An error with its HTTP status, its code (docs/api.md, "Errors") and a sentence for the client."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadParameter(ApiError):
    status, code = 422, "bad_parameter"


class BadImage(ApiError):
    """The body is not a usable image: undecodable, empty, truncated; a malformed multipart, no file field."""

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


class Forbidden(ApiError):
    """A valid API key without the scope the endpoint needs."""

    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class JobNotDone(ApiError):
    """An evaluation job's report asked for before the job is done."""

    status, code = 409, "not_done"


class JobAlreadyFinished(ApiError):
    """Cancelling an evaluation job that is done or failed."""

    status, code = 409, "already_finished"


class Overloaded(ApiError):
    status, code = 503, "overloaded"


class NotReady(ApiError):
    status, code = 503, "not_ready"


class RequestTimeout(ApiError):
    status, code = 504, "timeout"


class InternalError(ApiError):
    status, code = 500, "internal"


class ClientDisconnected(ApiError):
    # nginx's 499: nobody reads this answer, but logs and metrics should say why the request ended.
    status, code = 499, "client_disconnected"


INTERNAL_DETAIL = "internal error while handling the request; quote the request_id when reporting it"


def error_body(code: str, detail: str, request_id: str | None = None) -> dict[str, str]:
    body = {"error": code, "detail": detail}
    if request_id:
        body["request_id"] = request_id
    return body


# The library's image refusals by code (models/imaging/errors.py) → the API error that answers them.
_API_ERROR_OF_IMAGE_CODE: dict[str, type[ApiError]] = {
    "bad_image": BadImage,
    "too_large": TooLarge,
    "unsupported_media_type": UnsupportedMediaType,
    "bad_parameter": BadParameter,
}


def from_image_error(exc: ImageError) -> ApiError:
    """The API error for a decoder's refusal (400, 413, 415 or 422), keeping its sentence."""
    return api_error_for_image_code(exc.code, exc.detail)


def api_error_for_image_code(code: str, detail: str) -> ApiError:
    """The API error for an image refusal's code (also one reported by a decode worker process)."""
    return _API_ERROR_OF_IMAGE_CODE.get(code, BadImage)(detail)
