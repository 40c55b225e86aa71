"""FastAPI dependencies: the app's settings, models, metrics and the API-key check, as ``Annotated`` types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.errors import Forbidden, Unauthorized
from service.ingest.decode_pool import DecodePool
from service.keys import SCOPES, ApiKey, identify
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


@dataclass(frozen=True)
class Caller:
    """Who is calling: the API key's id (None when authentication is off), never the key."""

    key_id: str | None


def authenticate(
    request: Request, settings: Settings, credentials: HTTPAuthorizationCredentials | None
) -> ApiKey | None:
    """The caller's key, or 401 ``unauthorized``; None when no keys are configured (authentication off)."""
    keys = settings.api_key_table
    if not keys:
        return None
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("this endpoint needs 'Authorization: Bearer <API key>'")
    key = identify(credentials.credentials, keys)
    if key is None:
        raise Unauthorized("the API key is not valid")
    request.state.key_id = key.key_id  # for the logs; the key itself never leaves this function
    return key


def require_scope(scope: str) -> Callable[[Request, Settings, HTTPAuthorizationCredentials | None], Caller]:
    """A dependency that admits a caller whose key has ``scope`` (401 without a valid key, 403 ``forbidden``
    with a key that lacks it) and gives the route the key's id. Scopes: ``service.keys.SCOPES``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; the scopes are {', '.join(SCOPES)}")

    def check(request: Request, settings: SettingsDep, credentials: BearerDep) -> Caller:
        key = authenticate(request, settings, credentials)
        if key is None:
            return Caller(key_id=None)
        if scope not in key.scopes:
            raise Forbidden(f"API key {key.key_id!r} does not have the {scope!r} scope this endpoint needs")
        return Caller(key_id=key.key_id)

    check.__name__ = f"api_key_with_{scope}_scope"
    return check


# The routes' callers: /assess, /render and /dicomweb need "assess"; /evaluate needs "evaluate".
AssessCaller = Annotated[Caller, Depends(require_scope("assess"))]
EvaluateCaller = Annotated[Caller, Depends(require_scope("evaluate"))]
# GET /audit and GET /audit/{id} need "audit" (a verdict is given by an "assess" caller, like the image).
AuditCaller = Annotated[Caller, Depends(require_scope("audit"))]
# Before scopes every protected route took this; it now means the "assess" scope (routes that take images).
ApiKeyDep = AssessCaller


def api_key_check_unless_public(
    endpoint: str,
) -> Callable[[Request, Settings, HTTPAuthorizationCredentials | None], None]:
    """Any valid key, for an endpoint NORMGATE_PUBLIC_ENDPOINTS may open (probes, metrics, /models)."""

    def check(request: Request, settings: SettingsDep, credentials: BearerDep) -> None:
        if endpoint not in settings.public_endpoints:
            authenticate(request, settings, credentials)

    check.__name__ = f"api_key_unless_{endpoint}_public"
    return check
