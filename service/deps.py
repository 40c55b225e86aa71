"""FastAPI dependencies: the app's settings, models, metrics and the API-key check, as ``Annotated`` types."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.assessment import Assessor
from service.config import Settings
from service.errors import Unauthorized
from service.inference import ModelRegistry
from service.metrics import ServiceMetrics


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_assessor(request: Request) -> Assessor:
    return request.app.state.assessor


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
AssessorDep = Annotated[Assessor, Depends(get_assessor)]

# auto_error=False: a missing header must give our 401 JSON, not FastAPI's 403 {"detail": ...}.
_bearer = HTTPBearer(auto_error=False, description="API key, when NORMGATE_API_KEYS is set.")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def key_matches(given: str, keys: list[str]) -> bool:
    """Constant-time check of ``given`` against every configured key.

    Equal-length digests make ``compare_digest`` independent of the keys' lengths, and every key is
    compared (no early exit) so timing does not reveal which key, if any, nearly matched.
    """
    given_digest = _digest(given)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_digest, _digest(key))
    return matched


def require_api_key(settings: SettingsDep,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    if not settings.api_keys:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("this endpoint needs 'Authorization: Bearer <API key>'")
    if not key_matches(credentials.credentials, settings.api_keys):
        raise Unauthorized("the API key is not valid")


ApiKeyDep = Annotated[None, Depends(require_api_key)]
