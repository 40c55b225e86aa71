"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import MetricsDep, RegistryDep
from service.errors import NotReady
from service.metrics import CONTENT_TYPE_LATEST
from service.schemas import ErrorResponse, HealthResponse, ReadyResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="The process is alive")
def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, summary="Every model is loaded and warmed up",
            responses={503: {"model": ErrorResponse, "description": "not_ready"}})
def readyz(registry: RegistryDep) -> ReadyResponse:
    states = registry.states()
    if not registry.ready:
        waiting = "; ".join(f"{name}: {state}" for name, state in states.items()) or "no models started"
        raise NotReady(f"not every model is ready ({waiting})", headers={"Retry-After": "5"})
    return ReadyResponse(status="ready", models=states)


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(service_metrics: MetricsDep) -> Response:
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)
