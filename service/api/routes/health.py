"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from service.api.deps import MetricsDep, RegistryDep, api_key_check_unless_public
from service.errors import NotReady
from service.observability.metrics import CONTENT_TYPE_LATEST
from service.schemas import ErrorResponse, HealthResponse, ReadyResponse

router = APIRouter(tags=["operations"])

# Each opens without a key unless NORMGATE_PUBLIC_ENDPOINTS leaves it out (probes rarely carry secrets).
HealthzAuth = Annotated[None, Depends(api_key_check_unless_public("healthz"))]
ReadyzAuth = Annotated[None, Depends(api_key_check_unless_public("readyz"))]
MetricsAuth = Annotated[None, Depends(api_key_check_unless_public("metrics"))]
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "unauthorized: API key needed (not public here)"}
}


@router.get("/healthz", response_model=HealthResponse, summary="The process is alive", responses=_UNAUTHORIZED)
def healthz(_auth: HealthzAuth) -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Every model is loaded and warmed up",
    responses={503: {"model": ErrorResponse, "description": "not_ready"}, **_UNAUTHORIZED},
)
def readyz(registry: RegistryDep, _auth: ReadyzAuth) -> ReadyResponse:
    states = registry.states()
    if not registry.ready:
        waiting = "; ".join(f"{name}: {state}" for name, state in states.items()) or "no models started"
        raise NotReady(f"not every model is ready ({waiting})", headers={"Retry-After": "5"})
    return ReadyResponse(status="ready", models=states)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **_UNAUTHORIZED},
)
def metrics(service_metrics: MetricsDep, _auth: MetricsAuth) -> Response:
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)
