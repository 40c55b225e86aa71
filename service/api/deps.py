"""FastAPI dependencies: the app's settings, models, metrics and the API-key check, as ``Annotated`` types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.errors import Unauthorized
from service.ingest.decode_pool import DecodePool
from service.keys import key_matches
from service.observability.metrics import ServiceMetrics
from service.serving.assessment import Assessor
from service.serving.registry import ModelRegistry


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings  # app.state is untyped; create_app puts it there
    return settings


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry  # app.state is untyped; create_app puts it there
    return registry


def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics  # app.state is untyped; create_app puts it there
    return metrics


def get_decode_pool(request: Request) -> DecodePool:
    pool: DecodePool = request.app.state.decode_pool  # app.state is untyped; create_app puts it there
    return pool


def get_assessor(request: Request) -> Assessor:
    assessor: Assessor = request.app.state.assessor  # app.state is untyped; create_app puts it there
    return assessor


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
AssessorDep = Annotated[Assessor, Depends(get_assessor)]
DecodePoolDep = Annotated[DecodePool, Depends(get_decode_pool)]

# auto_error=False: a missing header must give our 401 JSON, not FastAPI's 403 {"detail": ...}.
_bearer = HTTPBearer(auto_error=False, description="API key, when NORMGATE_API_KEYS is set.")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require_api_key(settings: SettingsDep, credentials: BearerDep) -> None:
    """401 ``unauthorized`` unless no keys are configured or the bearer token is one of them."""
    digests = settings.api_key_digests
    if not digests:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("this endpoint needs 'Authorization: Bearer <API key>'")
    if not key_matches(credentials.credentials, digests):
        raise Unauthorized("the API key is not valid")


ApiKeyDep = Annotated[None, Depends(require_api_key)]


def api_key_check_unless_public(endpoint: str) -> Callable[[Settings, HTTPAuthorizationCredentials | None], None]:
    """The API-key check for an endpoint NORMGATE_PUBLIC_ENDPOINTS may open (probes, metrics, /models)."""

    def check(settings: SettingsDep, credentials: BearerDep) -> None:
        if endpoint not in settings.public_endpoints:
            require_api_key(settings, credentials)

    check.__name__ = f"api_key_unless_{endpoint}_public"
    return check
