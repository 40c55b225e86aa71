"""One /assess request from upload to answer: check parameters, decode off the event loop, queue, respond.

Cheap refusals come first (unknown model or method, not ready) so a bad request never costs a decode; the
decode and resize run in a decode process (service.ingest); the model work runs in the model's worker thread. Every
failure leaves as a ``service.errors.ApiError`` (docs/api.md, "Errors").

A DICOM without ``?model=`` is routed by its header (``routing.py``): by the attributes the header walk read
before decoding (so the image is resized for the routed model's grid once), checked again on the decoder's
reading. An image the gate cannot judge is answered ``unassessable`` without ever reaching a model, in this
order: ``no_frames``, ``unsupported_modality``, then ``too_small``, ``blank``, ``low_dynamic_range``
(``models.imaging.assessability``). After the model: ``out_of_distribution`` when its OOD score is over the
threshold of the model's ``ood`` block (docs/api.md, "Unassessable").

A multi-frame DICOM (a cine) is decoded once, its frames checked one by one, and every assessable frame
queued at once (``ModelWorker.submit_many``: each frame is one place in the queue and one model input, batched
with whatever else is queued); the answer has one result per frame and the series' decision
(``series.aggregate_frames``) in the top-level fields.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import torch

from models import saliency
from models.imaging import DecodedImage
from models.imaging.assessability import UnassessableReason, assessability_reason
from models.imaging.budget import ImageHeader
from service.config import Settings
from service.errors import (
    ApiError,
    BadParameter,
    ClientDisconnected,
    InternalError,
    NotReady,
    Overloaded,
    RequestTimeout,
    TooLarge,
)
from service.ingest.decode_pool import DecodePool, DecodeResult
from service.ingest.decode_worker import GridSpec
from service.ingest.upload import Upload
from service.observability.metrics import ServiceMetrics
from service.schemas import (
    AssessResponse,
    Decision,
    FrameResult,
    Heatmap,
    HeatmapMode,
    ImageSize,
    ModelRef,
    Point,
    Timings,
)
from service.serving.batching import DeadlineExceeded, PendingRequest, QueueClosed, QueueFull
from service.serving.decisions import DecisionListener, DecisionRecord, notify
from service.serving.registry import ModelRegistry
from service.serving.routing import InstanceAttributes
from service.serving.series import aggregate_frames
from service.serving.worker import ClientGone, ModelInput, ModelOutput, ModelWorker

log = logging.getLogger("normgate.decisions")


@dataclass(frozen=True)
class AssessParams:
    model: str | None
    method: str
    heatmap: HeatmapMode
    source: str = "assess"  # which door the image came in by (audit records)
    key_id: str | None = None  # the caller's API key id (never the key)
    client: str | None = None  # the caller's address


def _grid_spec(worker: ModelWorker) -> GridSpec:
    """The model input ``worker`` takes: its grid and normalisation (what the decode process resizes to)."""
    meta = worker.meta
    assert meta is not None  # every registered worker carries its validated model.json
    return GridSpec((int(meta.input_size[0]), int(meta.input_size[1])), tuple(meta.mean), tuple(meta.std))


class Assessor:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, metrics: ServiceMetrics, decode_pool: DecodePool
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.decode_pool = decode_pool
        self.methods = frozenset(saliency.list_methods())
        # Called with every decision once it is final (the audit trail subscribes); see decisions.py.
        self.decision_listeners: list[DecisionListener] = []

    async def _decode_for(
        self,
        worker: ModelWorker,
        upload: Upload,
        deadline: float,
        disconnected: asyncio.Future[None] | None,
        keep_pixels: bool,
        header: ImageHeader | None = None,
    ) -> DecodeResult:
        """Decode ``upload`` in a decode process and resize it to ``worker``'s grid (service.ingest.decode_pool)."""
        result = await self.decode_pool.decode(
            upload, deadline, disconnected, grid=_grid_spec(worker), keep_pixels=keep_pixels, header=header
        )
        self.metrics.compute_duration.labels(worker.name, "decode").observe(result.seconds)
        return result

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

    async def assess(
        self,
        upload: Upload,
        params: AssessParams,
        worker: ModelWorker,
        request_id: str,
        arrived: float,
        disconnected: asyncio.Future[None] | None,
    ) -> AssessResponse:
        _, response = await self._assess(upload, params, worker, request_id, arrived, disconnected, False)
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
        """``assess`` that also hands back the decoded image with its pixels, for callers that derive images
        from it (the DICOMweb route's Secondary Capture) without decoding the upload a second time."""
        return await self._assess(upload, params, worker, request_id, arrived, disconnected, True)

    async def _assess(
        self,
        upload: Upload,
        params: AssessParams,
        worker: ModelWorker,
        request_id: str,
        arrived: float,
        disconnected: asyncio.Future[None] | None,
        keep_pixels: bool,
    ) -> tuple[DecodedImage, AssessResponse]:
        deadline = self.deadline_from(arrived)
        method = params.method if params.heatmap == "png" else None
        explicit_model = params.model is not None
        header = self.decode_pool.inspect(upload)
        if header is not None and header.kind == "dicom" and not explicit_model:
            worker = self._routed_by_header(header, worker)
        if header is not None and header.frames > worker.settings.max_queue_size:
            raise TooLarge(
                f"the DICOM has {header.frames} frames; model {worker.name!r} queues at most "
                f"{worker.settings.max_queue_size} images (NORMGATE_MAX_QUEUE_SIZE), one per frame"
            )
        result = await self._decode_for(worker, upload, deadline, disconnected, keep_pixels, header)
        decoded = result.decoded
        assert decoded is not None  # a grid job answers the decoded image's fields
        # A DICOM without ?model= goes to the model that serves its header (routing.py).
        reason: UnassessableReason | None = "no_frames" if decoded.number_of_frames == 0 else None
        if reason is None and decoded.source == "dicom" and not explicit_model:
            routed = self.registry.route(InstanceAttributes.of(decoded))
            if routed is None:
                reason = "unsupported_modality"
            elif routed is not worker:
                if not routed.ready:
                    raise NotReady(
                        f"model {routed.name!r} is {routed.describe_state()}; try again shortly",
                        headers={"Retry-After": "5"},
                    )
                if _grid_spec(routed) != _grid_spec(worker):
                    # Decoded again for the routed model's grid: the header that routes it was only read by
                    # the decoder. Only instances of a non-default model with another grid pay this.
                    result = await self._decode_for(routed, upload, deadline, disconnected, keep_pixels)
                    assert result.decoded is not None
                    decoded = result.decoded
                worker = routed
        if reason is None and decoded.number_of_frames > 1:
            response = await self._assess_frames(
                result, decoded, params, worker, method, request_id, arrived, deadline, disconnected
            )
            self.record_decision(response, worker, params, decoded)
            return decoded, response
        if reason is None:
            reason = assessability_reason(
                result.statistics, decoded.width, decoded.height, decoded.number_of_frames, self.settings.min_image_side
            )
        if reason is not None:  # the gate cannot judge this image; no model runs
            response = self._unassessable_response(reason, worker, decoded, request_id, arrived)
            self.record_decision(response, worker, params, decoded)
            return decoded, response
        assert result.grid is not None  # an image with pixels always gets its model input
        model_input = ModelInput(
            image=torch.from_numpy(result.grid), original_hw=(decoded.height, decoded.width), method=method
        )
        (output,) = await self._compute(worker, [model_input], deadline, disconnected)
        response = self._response(output, worker, params, decoded.width, decoded.height, request_id, arrived)
        self.record_decision(response, worker, params, decoded)
        return decoded, response

    def _routed_by_header(self, header: ImageHeader, worker: ModelWorker) -> ModelWorker:
        """The model the header walk's routing attributes name (the request's worker when none does, or for a
        header without a Modality: the decoder's reading decides then), refused 503 while it is not ready."""
        attributes = InstanceAttributes(
            modality=header.modality,
            body_part_examined=header.body_part_examined,
            series_description=header.series_description,
            view_position=header.view_position,
        )
        routed = self.registry.route(attributes) if attributes.modality else None
        if routed is None or routed is worker:
            return worker
        if not routed.ready:
            raise NotReady(
                f"model {routed.name!r} is {routed.describe_state()}; try again shortly", headers={"Retry-After": "5"}
            )
        return routed

    async def _compute(
        self,
        worker: ModelWorker,
        model_inputs: list[ModelInput],
        deadline: float,
        disconnected: asyncio.Future[None] | None,
    ) -> list[ModelOutput]:
        """Queue ``model_inputs`` (one image, or the frames of a cine, all at once) and wait for their answers;
        every failure leaves as its ApiError."""
        if time.monotonic() > deadline:
            raise RequestTimeout("the request deadline passed before the image was queued")
        try:
            pendings: list[PendingRequest[ModelInput, ModelOutput]] = (
                [worker.submit(model_inputs[0], deadline)]
                if len(model_inputs) == 1
                else worker.submit_many(model_inputs, deadline)
            )
        except QueueFull:
            what = "requests" if len(model_inputs) == 1 else f"requests queued; the {len(model_inputs)} frames"
            raise Overloaded(
                f"model {worker.name!r} has {worker.queue_depth} {what} do not fit in {worker.settings.max_queue_size}"
                if len(model_inputs) > 1
                else f"model {worker.name!r} has {worker.settings.max_queue_size} requests queued",
                headers={"Retry-After": str(worker.retry_after_seconds())},
            ) from None
        except QueueClosed:
            raise NotReady("the service is shutting down", headers={"Retry-After": "5"}) from None
        try:
            if len(pendings) == 1:
                return [await worker.result(pendings[0], disconnected)]
            return await worker.results(pendings, disconnected)
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

    async def _assess_frames(
        self,
        result: DecodeResult,
        decoded: DecodedImage,
        params: AssessParams,
        worker: ModelWorker,
        method: str | None,
        request_id: str,
        arrived: float,
        deadline: float,
        disconnected: asyncio.Future[None] | None,
    ) -> AssessResponse:
        """A multi-frame image: every frame checked and, when assessable, computed; the series decided from them."""
        assert result.grid is not None and result.frame_statistics is not None  # a decoded multi-frame image
        grid = torch.from_numpy(result.grid)
        reasons: list[UnassessableReason | None] = [
            assessability_reason(statistics, decoded.width, decoded.height, 1, self.settings.min_image_side)
            for statistics in result.frame_statistics
        ]
        computed = [index for index, reason in enumerate(reasons) if reason is None]
        outputs: dict[int, ModelOutput] = {}
        if computed:
            inputs = [
                ModelInput(image=grid[index], original_hw=(decoded.height, decoded.width), method=method)
                for index in computed
            ]
            outputs = dict(zip(computed, await self._compute(worker, inputs, deadline, disconnected)))
        return self._frames_response(
            reasons, outputs, worker, params, decoded.width, decoded.height, request_id, arrived
        )

    def record_decision(
        self,
        response: AssessResponse,
        worker: ModelWorker,
        params: AssessParams,
        decoded: DecodedImage | None,
        *,
        series: tuple[str, str] | None = None,
    ) -> None:
        """Count the decision, log it with the caller's key id (never the key), and hand its record to every
        listener (the audit trail). ``series``: (Study, Series Instance UID) of a series result made from
        instances already counted one by one: audited, not counted again."""
        if series is None:
            self.metrics.decisions.labels(response.model.name, response.decision, response.reason or "none").inc()
            if response.probability is not None:
                self.metrics.probability.labels(response.model.name).observe(response.probability)
        log.info(
            "decision %s: %s%s by model %s %s, key %s",
            response.assessment_id,
            response.decision,
            f" ({response.reason})" if response.reason else "",
            response.model.name,
            response.model.version,
            params.key_id or "-",
        )
        record = DecisionRecord(
            time=datetime.now(UTC),
            assessment_id=response.assessment_id,
            request_id=response.request_id,
            source=params.source,
            study_instance_uid=decoded.study_instance_uid if decoded else series[0] if series else None,
            series_instance_uid=decoded.series_instance_uid if decoded else series[1] if series else None,
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
        decision, label, reason = _decision_of(output, worker)
        heatmap, point = _explanation_of(output, params)
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

    def _frames_response(
        self,
        reasons: list[UnassessableReason | None],
        outputs: dict[int, ModelOutput],
        worker: ModelWorker,
        params: AssessParams,
        width: int,
        height: int,
        request_id: str,
        arrived: float,
    ) -> AssessResponse:
        """The answer for a cine: one FrameResult per frame, the series' decision on top (series.py), the
        top-level probability, point, heatmap and OOD score those of ``worst_frame``."""
        meta = worker.meta
        assert meta is not None  # the frames ran on (or were refused for) this loaded model
        frames: list[FrameResult] = []
        for index, frame_reason in enumerate(reasons):
            output = outputs.get(index)
            if output is None:
                assert frame_reason is not None  # a frame is computed unless a check refused it
                frames.append(FrameResult(index=index, probability=None, decision="unassessable", reason=frame_reason))
                continue
            decision, _, reason = _decision_of(output, worker)
            heatmap, point = _explanation_of(output, params)
            frames.append(
                FrameResult(
                    index=index,
                    probability=output.probability,
                    decision=decision,
                    reason=reason,
                    point=point,
                    heatmap=heatmap,
                )
            )
        verdict = aggregate_frames(frames)
        worst = frames[verdict.worst_frame] if verdict.worst_frame is not None else None
        worst_output = outputs.get(verdict.worst_frame) if verdict.worst_frame is not None else None
        label = {"reacquire": meta.positive_class, "accept": meta.negative_class}.get(verdict.decision)
        computed = list(outputs.values())
        return AssessResponse(
            request_id=request_id,
            assessment_id=request_id,
            model=ModelRef(name=worker.name, version=meta.version, arch=meta.arch),
            label=label,
            probability=worst.probability if worst else None,
            threshold=float(meta.decision_threshold),
            calibration=meta.calibration.version if meta.calibration else None,
            decision=verdict.decision,
            reason=verdict.reason,
            ood_score=worst_output.ood_score if worst_output else None,
            point=worst.point if worst else None,
            image=ImageSize(width=width, height=height),
            heatmap=worst.heatmap if worst else None,
            frames=frames,
            worst_frame=verdict.worst_frame,
            timings_ms=Timings(
                # The longest any frame waited; the cine's share of the batches its frames were computed in.
                queue=round(max((o.queue_seconds for o in computed), default=0.0) * 1000, 3),
                compute=round(sum(o.compute_seconds / o.batch_size for o in computed) * 1000, 3),
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


def _decision_of(output: ModelOutput, worker: ModelWorker) -> tuple[Decision, str | None, UnassessableReason | None]:
    """(decision, label, reason) of one computed image or frame against its model's threshold and OOD check."""
    meta = worker.meta
    assert meta is not None  # the output came from this loaded model
    if meta.ood is not None and output.ood_score is not None and output.ood_score > meta.ood.threshold:
        # Unlike anything the model was trained on: its probability is kept, but it decides nothing.
        return "unassessable", None, "out_of_distribution"
    if output.probability >= meta.decision_threshold:
        return "reacquire", meta.positive_class, None
    return "accept", meta.negative_class, None


def _explanation_of(output: ModelOutput, params: AssessParams) -> tuple[Heatmap | None, Point | None]:
    """The heatmap and its peak of one computed image or frame (None, None with heatmap=none)."""
    if output.heatmap_png is None:
        return None, None
    assert output.point is not None  # the worker sets both from the same map
    heatmap = Heatmap(
        method=params.method,
        width=output.heatmap_hw[1],
        height=output.heatmap_hw[0],
        png_base64=base64.b64encode(output.heatmap_png).decode("ascii"),
    )
    return heatmap, Point(x=output.point[0], y=output.point[1])
