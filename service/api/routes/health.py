"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from service.api.deps import DecodePoolDep, MetricsDep, RegistryDep, api_key_check_unless_public
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
    summary="Every model is loaded and warmed up, the decode queue is not full, and no SIGTERM was received",
    responses={503: {"model": ErrorResponse, "description": "not_ready"}, **_UNAUTHORIZED},
)
def readyz(request: Request, registry: RegistryDep, decode_pool: DecodePoolDep, _auth: ReadyzAuth) -> ReadyResponse:
    if request.app.state.draining:
        raise NotReady("the service is shutting down (SIGTERM); requests already accepted are finishing")
    states = registry.states()
    if not registry.ready:
        waiting = "; ".join(f"{name}: {state}" for name, state in states.items()) or "no models started"
        raise NotReady(f"not every model is ready ({waiting})", headers={"Retry-After": "5"})
    if not decode_pool.started:
        raise NotReady("the decode processes are starting", headers={"Retry-After": "1"})
    if decode_pool.saturated:
        # New uploads are being refused 503 right now: a load balancer should send them elsewhere.
        raise NotReady(
            f"the decode queue is full ({decode_pool.ordinary.in_flight} uploads decoding or waiting)",
            headers={"Retry-After": "1"},
        )
    return ReadyResponse(status="ready", models=states)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **_UNAUTHORIZED},
)
def metrics(service_metrics: MetricsDep, _auth: MetricsAuth) -> Response:
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)
