"""The FastAPI application factory and its lifespan.

``create_app(settings)`` builds a self-contained app: its own metrics registry, model registry, decode pool.
Startup checks the configuration (models folder, default model, device) and starts one worker thread per
model; loading and warm-up continue in those threads, so /healthz answers at once and /readyz turns 200 when
every model has answered its warm-up requests. Shutdown stops accepting, lets the workers finish what is
queued, and joins them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.imaging.limits import MIB
from service.api import openapi as service_openapi
from service.api.errors import install_error_handlers
from service.api.routes import assess, audit, docs, health, models, viewer
from service.api.routes import dicomweb as dicomweb_routes
from service.api.routes import evaluate as evaluate_routes
from service.config import Settings, get_settings
from service.errors import INTERNAL_DETAIL, error_body
from service.ingest.decode_pool import DecodePool, decode_thread_count
from service.observability.metrics import ServiceMetrics
from service.serving.assessment import Assessor
from service.serving.registry import ModelRegistry
from service.serving.worker import BatchHook

log = logging.getLogger("normgate.app")

DESCRIPTION = """
NormGate is an explainable quality gate for chest radiographs: it estimates the probability that an image
shows a foreign object (the quality problem), decides **reacquire** or **accept** against the model's
threshold, and explains the positive class with a NormGrad saliency map and its peak point in original pixels.

Errors are JSON `{"error": code, "detail": sentence, "request_id": id}`; every code and its status is listed in
the repository's docs/api.md ("Errors").
"""


AUTH_OFF_WARNING = (
    "AUTHENTICATION IS OFF: NORMGATE_API_KEYS is empty, so every endpoint (/assess, /evaluate, /dicomweb, …) "
    "answers anyone who can reach this server. Set NORMGATE_API_KEYS (python -m service.keys new --id ID) "
    "outside a laptop; /metrics shows normgate_auth_enabled 0 until then."
)


async def _refuse(send: Send, request_id: str, code: str, detail: str, retry_after: int) -> None:
    """A 503 JSON error sent before the request reached the app (its body, if any, is never read)."""
    body = json.dumps(error_body(code, detail, request_id)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Gives every HTTP request an id, times it, and turns an unexpected exception into a 500 JSON error.

    A plain ASGI middleware (not ``BaseHTTPMiddleware``) so it neither buffers bodies nor breaks the
    disconnect signal /assess listens for.
    """

    # Probes and scrapes are answered even when busy: an overloaded service is not a dead one.
    UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_concurrent_requests: int = 0) -> None:
        self.app = app
        self.metrics = metrics
        self.max_concurrent_requests = max_concurrent_requests
        self.in_progress = 0  # only touched on the event loop

    async def _refuse_busy(self, send: Send, request_id: str) -> None:
        detail = f"{self.in_progress} requests are in progress, the most this server takes at once; try again shortly"
        await _refuse(send, request_id, "overloaded", detail, retry_after=1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        if scope.get("path") not in self.UNLIMITED_PATHS and getattr(scope["app"].state, "draining", False):
            # SIGTERM: accepted requests finish; new ones go elsewhere (service.api.server.DrainingServer).
            self.metrics.rejected.labels("not_ready").inc()
            self.metrics.request_duration.labels("unmatched", "503").observe(0.0)
            await _refuse(
                send, request_id, "not_ready", "the service is shutting down; send the request again", retry_after=5
            )
            return
        limited = self.max_concurrent_requests > 0 and scope.get("path") not in self.UNLIMITED_PATHS
        if limited and self.in_progress >= self.max_concurrent_requests:
            self.metrics.rejected.labels("overloaded").inc()
            self.metrics.request_duration.labels("unmatched", "503").observe(0.0)
            await self._refuse_busy(send, request_id)
            return
        if limited:
            self.in_progress += 1
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when NORMGATE_SHUTDOWN_GRACE_S ends; it would answer a
            # plain-text 500. Say what happened instead; the task ends here either way (not re-raised: nothing
            # above this middleware but uvicorn's wrapper, which would only log it as an application error).
            log.warning("request %s %s %s cancelled by shutdown", request_id, scope.get("method"), scope.get("path"))
            state["error_code"] = "not_ready"
            if not response_started:
                status = 503
                body = json.dumps(
                    error_body(
                        "not_ready",
                        "the service shut down before this request was completed; send it again",
                        request_id,
                    )
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"5"),
                            (b"connection", b"close"),
                            (b"x-request-id", request_id.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        except Exception:
            log.exception("unhandled error, request %s %s %s", request_id, scope.get("method"), scope.get("path"))
            state["error_code"] = "internal"
            if not response_started:
                status = 500
                body = json.dumps(error_body("internal", INTERNAL_DETAIL, request_id)).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", request_id.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            if limited:
                self.in_progress -= 1
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.request_duration.labels(endpoint, str(status)).observe(time.perf_counter() - started)
            # Rejections of submitted work (POST /assess, /evaluate, …), not probes polling /readyz.
            if state.get("error_code") and route is not None and scope.get("method") == "POST":
                self.metrics.rejected.labels(state["error_code"]).inc()


def create_app(settings: Settings | None = None, *, batch_hook: BatchHook | None = None) -> FastAPI:
    """Build the app. ``batch_hook(model_name, batch)`` runs in a model's worker thread before each batch
    (tracing, and the tests' way to hold a worker still)."""
    settings = settings or get_settings()
    metrics = ServiceMetrics()
    registry = ModelRegistry(settings, metrics, batch_hook=batch_hook)
    decode_pool = DecodePool(
        decode_thread_count(settings.decode_workers),
        max_waiting=settings.max_queue_size,
        limits=settings.decode_limits,
        large_threshold_bytes=int(settings.decode_large_mb * MIB),
        nice=settings.decode_nice,
        on_abandon=lambda lane, reason: metrics.decode_abandoned.labels(lane, reason).inc(),
    )
    for lane in decode_pool.lanes:
        metrics.decode_in_flight.labels(lane.name).set_function(partial(getattr, lane, "in_flight"))

    metrics.auth_enabled.set(1 if settings.api_key_table else 0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_key_table:
            log.warning(AUTH_OFF_WARNING)
        try:
            await audit.start_store(app, settings)
            decode_pool.start()
            registry.start()
            metrics.preinitialise_models(registry.workers)
            evaluate_routes.start_evaluation_runner(app, settings)
            await dicomweb_routes.start_dicomweb(app, settings)
            yield
        finally:
            await dicomweb_routes.stop_dicomweb(app)
            evaluate_routes.stop_evaluation_runner(app)
            registry.stop(timeout_s=settings.request_timeout_ms / 1000.0 + 5.0)
            decode_pool.shutdown()
            await audit.stop_store(app)  # last: decisions answered during the shutdown are recorded too

    # /docs is served from the package (service/api/routes/docs.py), not from a CDN; /redoc needs a CDN: off.
    app = FastAPI(
        title="NormGate", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.decode_pool = decode_pool
    app.state.draining = False  # set on SIGTERM by service.api.server.DrainingServer
    app.state.assessor = Assessor(settings, registry, metrics, decode_pool)
    install_error_handlers(app)
    service_openapi.install(app)
    app.include_router(assess.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(viewer.router)
    app.include_router(docs.router)
    app.include_router(evaluate_routes.router)
    app.include_router(dicomweb_routes.router)
    app.include_router(audit.router)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_concurrent_requests=settings.max_concurrent_requests
    )
    return app
