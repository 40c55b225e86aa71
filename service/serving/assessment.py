"""One /assess request from upload to answer: check parameters, decode off the event loop, queue, respond.

Cheap refusals come first (unknown model or method, not ready) so a bad request never costs a decode; the
decode and resize run in a bounded thread pool; the model work runs in the model's worker thread. Every
failure leaves as a ``service.errors.ApiError`` (docs/api.md, "Errors").

In the decode pool, after decoding: a DICOM without ``?model=`` is routed by its header (``routing.py``), and
an image the gate cannot judge is answered ``unassessable`` without ever reaching a model, in this order:
``no_frames``, ``unsupported_modality``, then ``too_small``, ``blank``, ``low_dynamic_range``
(``models.imaging.assessability``). After the model: ``out_of_distribution`` when its OOD score is over the
threshold of the model's ``ood`` block (docs/api.md, "Unassessable").
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from models import saliency
from models.imaging import DecodedImage, DecodeLimits, decode_image, preprocess_batch
from models.imaging.assessability import UnassessableReason, check_assessable
from service.config import Settings
from service.errors import ApiError, BadParameter, InternalError, NotReady, Overloaded, RequestTimeout
from service.ingest.decode_pool import DecodePool
from service.ingest.upload import Upload
from service.observability.metrics import ServiceMetrics
from service.schemas import AssessResponse, Decision, Heatmap, HeatmapMode, ImageSize, ModelRef, Point, Timings
from service.serving.batching import DeadlineExceeded, QueueClosed, QueueFull
from service.serving.decisions import DecisionListener, DecisionRecord, notify
from service.serving.registry import ModelRegistry
from service.serving.routing import InstanceAttributes
from service.serving.worker import ClientGone, ModelInput, ModelOutput, ModelWorker


class ClientDisconnected(ApiError):
    # nginx's 499: nobody reads this answer, but logs and metrics should say why the request ended.
    status, code = 499, "client_disconnected"


@dataclass(frozen=True)
class AssessParams:
    model: str | None
    method: str
    heatmap: HeatmapMode
    source: str = "assess"  # which door the image came in by (audit records)
    key_id: str | None = None  # the caller's API key id (never the key)
    client: str | None = None  # the caller's address


@dataclass(frozen=True)
class Prepared:
    """An upload after the decode pool: the image, the model that answers it, and its input or why none."""

    decoded: DecodedImage
    worker: ModelWorker  # named by ?model=, routed by the DICOM header, or the default model
    model_input: ModelInput | None  # None: unassessable before any model runs
    reason: UnassessableReason | None


class Assessor:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, metrics: ServiceMetrics, decode_pool: DecodePool
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.decode_pool = decode_pool
        self.limits = DecodeLimits(
            max_body_bytes=settings.max_body_bytes,
            max_pixels=settings.max_pixels,
            max_dicom_element_bytes=settings.max_dicom_element_bytes,
        )
        self.methods = frozenset(saliency.list_methods())
        # Called with every decision once it is final (the audit trail subscribes); see decisions.py.
        self.decision_listeners: list[DecisionListener] = []

    def deadline_from(self, arrived_monotonic: float) -> float:
        return arrived_monotonic + self.settings.request_timeout_ms / 1000.0

    def check(self, params: AssessParams) -> ModelWorker:
        """The worker for this request, or the 422/503 that refuses it before any work."""
        name = params.model or self.registry.default_name
        worker = self.registry.get(name)
        if worker is None:
            raise BadParameter(f"unknown model {name!r}; loaded models: {', '.join(self.registry.workers)}")
        if params.method not in self.methods:
            raise BadParameter(f"unknown saliency method {params.method!r}; GET /methods lists them")
        if not worker.ready:
            raise NotReady(
                f"model {name!r} is {worker.describe_state()}; try again shortly", headers={"Retry-After": "5"}
            )
        return worker

    def _decode_and_prepare(
        self, upload: Upload, worker: ModelWorker, explicit_model: bool, method: str | None
    ) -> Prepared:
        """Decode, route, check assessability and build the model input: in the decode pool, off the loop."""
        started = time.perf_counter()
        decoded = decode_image(upload.body, upload.content_type, self.limits)
        reason: UnassessableReason | None = "no_frames" if decoded.number_of_frames == 0 else None
        if reason is None and decoded.source == "dicom" and not explicit_model:
            routed = self.registry.route(InstanceAttributes.of(decoded))
            if routed is None:
                reason = "unsupported_modality"
            else:
                worker = routed
        if reason is None:
            reason = check_assessable(decoded.pixels, decoded.number_of_frames, self.settings.min_image_side)
        model_input = None
        if reason is None:
            meta = worker.meta
            assert meta is not None  # every registered worker carries its validated model.json
            image = preprocess_batch([decoded.pixels], meta.input_size, meta.mean, meta.std)[0]
            model_input = ModelInput(image=image, original_hw=(decoded.height, decoded.width), method=method)
        self.metrics.compute_duration.labels(worker.name, "decode").observe(time.perf_counter() - started)
        return Prepared(decoded=decoded, worker=worker, model_input=model_input, reason=reason)

    async def assess(
        self,
        upload: Upload,
        params: AssessParams,
        worker: ModelWorker,
        request_id: str,
        arrived: float,
        disconnected: asyncio.Future[None] | None,
    ) -> AssessResponse:
        _, response = await self.assess_keeping_image(upload, params, worker, request_id, arrived, disconnected)
        return response

    async def assess_keeping_image(
        self,
        upload: Upload,
        params: AssessParams,
        worker: ModelWorker,
        request_id: str,
        arrived: float,
        disconnected: asyncio.Future[None] | None,
    ) -> tuple[DecodedImage, AssessResponse]:
        """``assess`` that also hands back the decoded image, for callers that derive images from it
        (the DICOMweb route's Secondary Capture) without decoding the upload a second time."""
        deadline = self.deadline_from(arrived)
        method = params.method if params.heatmap == "png" else None
        prepared = await self.decode_pool.run(
            self._decode_and_prepare, upload, worker, params.model is not None, method
        )
        decoded, worker, model_input = prepared.decoded, prepared.worker, prepared.model_input
        if model_input is None:  # the gate cannot judge this image; no model runs
            assert prepared.reason is not None
            response = self._unassessable_response(prepared.reason, worker, decoded, request_id, arrived)
            self.record_decision(response, worker, params, decoded)
            return decoded, response
        if not worker.ready:  # routed to a model other than the one check() admitted
            raise NotReady(
                f"model {worker.name!r} is {worker.describe_state()}; try again shortly", headers={"Retry-After": "5"}
            )
        if time.monotonic() > deadline:
            raise RequestTimeout("the request deadline passed before the image was queued")
        try:
            pending = worker.submit(model_input, deadline)
        except QueueFull:
            raise Overloaded(
                f"model {worker.name!r} has {worker.settings.max_queue_size} requests queued",
                headers={"Retry-After": str(worker.retry_after_seconds())},
            ) from None
        except QueueClosed:
            raise NotReady("the service is shutting down", headers={"Retry-After": "5"}) from None
        try:
            output = await worker.result(pending, disconnected)
        except DeadlineExceeded:
            raise RequestTimeout(
                f"the request waited longer than {self.settings.request_timeout_ms:g} ms "
                "in the queue and was not computed"
            ) from None
        except ClientGone:
            raise ClientDisconnected("the client disconnected before its request was computed") from None
        except ApiError:
            raise
        except Exception as exc:  # the batch failed; every request of it gets this
            raise InternalError(
                f"model computation failed ({type(exc).__name__}); quote the request_id when reporting it"
            ) from exc
        response = self._response(output, worker, params, decoded.width, decoded.height, request_id, arrived)
        self.record_decision(response, worker, params, decoded)
        return decoded, response

    def record_decision(
        self, response: AssessResponse, worker: ModelWorker, params: AssessParams, decoded: DecodedImage | None
    ) -> None:
        """Count the decision and hand its record to every listener (the audit trail)."""
        self.metrics.decisions.labels(response.model.name, response.decision, response.reason or "none").inc()
        record = DecisionRecord(
            time=datetime.now(UTC),
            assessment_id=response.assessment_id,
            request_id=response.request_id,
            source=params.source,
            study_instance_uid=decoded.study_instance_uid if decoded else None,
            series_instance_uid=decoded.series_instance_uid if decoded else None,
            sop_instance_uid=decoded.sop_instance_uid if decoded else None,
            model_name=response.model.name,
            model_version=response.model.version,
            weights_sha256=worker.weights_sha256,
            method=response.heatmap.method if response.heatmap else None,
            probability=response.probability,
            threshold=response.threshold,
            calibration=response.calibration,
            decision=response.decision,
            reason=response.reason,
            point_x=response.point.x if response.point else None,
            point_y=response.point.y if response.point else None,
            ood_score=response.ood_score,
            latency_ms=response.timings_ms.total,
            key_id=params.key_id,
            client=params.client,
        )
        notify(self.decision_listeners, record)

    def _response(
        self,
        output: ModelOutput,
        worker: ModelWorker,
        params: AssessParams,
        width: int,
        height: int,
        request_id: str,
        arrived: float,
    ) -> AssessResponse:
        meta = worker.meta
        assert meta is not None  # check() admitted a ready worker: its model.json is loaded
        reacquire = output.probability >= meta.decision_threshold
        decision: Decision = "reacquire" if reacquire else "accept"
        label: str | None = meta.positive_class if reacquire else meta.negative_class
        reason: UnassessableReason | None = None
        if meta.ood is not None and output.ood_score is not None and output.ood_score > meta.ood.threshold:
            # Unlike anything the model was trained on: its probability is kept, but it decides nothing.
            decision, label, reason = "unassessable", None, "out_of_distribution"
        heatmap = None
        point = None
        if output.heatmap_png is not None:
            assert output.point is not None  # the worker sets both from the same map
            heatmap = Heatmap(
                method=params.method,
                width=output.heatmap_hw[1],
                height=output.heatmap_hw[0],
                png_base64=base64.b64encode(output.heatmap_png).decode("ascii"),
            )
            point = Point(x=output.point[0], y=output.point[1])
        return AssessResponse(
            request_id=request_id,
            assessment_id=request_id,
            model=ModelRef(name=worker.name, version=meta.version, arch=meta.arch),
            label=label,
            probability=output.probability,
            threshold=float(meta.decision_threshold),
            calibration=meta.calibration.version if meta.calibration else None,
            decision=decision,
            reason=reason,
            ood_score=output.ood_score,
            point=point,
            image=ImageSize(width=width, height=height),
            heatmap=heatmap,
            timings_ms=Timings(
                queue=round(output.queue_seconds * 1000, 3),
                compute=round(output.compute_seconds * 1000, 3),
                total=round((time.monotonic() - arrived) * 1000, 3),
            ),
        )

    def _unassessable_response(
        self, reason: UnassessableReason, worker: ModelWorker, decoded: DecodedImage, request_id: str, arrived: float
    ) -> AssessResponse:
        """The answer for an image refused before any model ran: the model it would have gone to (the default
        one for ``unsupported_modality``), no probability, no explanation."""
        meta = worker.meta
        assert meta is not None  # every registered worker carries its validated model.json
        return AssessResponse(
            request_id=request_id,
            assessment_id=request_id,
            model=ModelRef(name=worker.name, version=meta.version, arch=meta.arch),
            label=None,
            probability=None,
            threshold=float(meta.decision_threshold),
            calibration=None,
            decision="unassessable",
            reason=reason,
            ood_score=None,
            point=None,
            image=ImageSize(width=decoded.width, height=decoded.height),
            heatmap=None,
            timings_ms=Timings(queue=0.0, compute=0.0, total=round((time.monotonic() - arrived) * 1000, 3)),
        )
