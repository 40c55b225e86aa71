"""Series results for instances that arrive one by one: a cine stored as a classic MR series (one single-frame
instance per cardiac phase) is assessed instance by instance on arrival (service/dicomweb/stow.py), and when
the series is complete it also gets one decision and one SR that references every frame
(``results.build_series_report``).

When is a series complete? DICOM does not say for sure; NormGate takes these signs (docs/integration.md,
"Series"), checked when a request's instances are assessed, before its answer goes out:

* **all phases**: the instances declare how many the cine has (Cardiac Number of Images (0018,1090), else
  Number of Temporal Positions (0020,0105)) and that many have arrived: complete now;
* **one request**: no count is declared and every instance of the series NormGate has came in this one
  STOW-RS request (the Orthanc example forwards a series on Orthanc's stable-series event, all instances in one
  request): complete now;
* **settled**: otherwise (a declared count not reached, instances spread over several requests, C-STORE one
  at a time), complete ``NORMGATE_SERIES_SETTLE_S`` after its last instance arrived; a new instance restarts
  the wait.

A series with one instance gets no series result (the instance's own SR is its answer). An instance that
arrives after its series' result was made reopens it: after the settle time a new SR covers every instance
(its SOP Instance UID is derived from the frames, so the same frames give the same SR). The frames of a series
are ordered by Instance Number, then Trigger Time, then SOP Instance UID. The series decision is the rule of
service/serving/series.py, the same one a multi-frame /assess answer follows.

Keys are (Study, Series, model): the same series assessed by two models has two results. The collector lives
on the event loop (no locks); a finished series is kept (its headers and frame results, no pixels) for
``MAX_FINISHED_SERIES`` series so that late instances reopen it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from models.metadata import ModelMetadata
from service.dicomweb.results import SeriesFrame
from service.schemas import AssessResponse, FrameResult, ImageSize, Timings
from service.serving.assessment import AssessParams
from service.serving.series import aggregate_frames

log = logging.getLogger("normgate.dicomweb")

__all__ = ["MAX_FINISHED_SERIES", "SeriesCollector", "SeriesKey", "SeriesResult", "series_answer"]

MAX_FINISHED_SERIES = 256


@dataclass(frozen=True)
class SeriesKey:
    study_instance_uid: str
    series_instance_uid: str
    model: str


@dataclass
class _Instance:
    source: Dataset  # the header, without pixels
    answer: AssessResponse
    order: tuple[float, float, str]


@dataclass
class _Series:
    key: SeriesKey
    meta: ModelMetadata
    params: AssessParams
    first_arrival: float
    instances: dict[str, _Instance] = field(default_factory=dict)
    requests: set[str] = field(default_factory=set)  # requests that brought instances since the last result
    requests_done: int = 0  # requests whose instances of this series were all assessed
    declared: int | None = None  # the number of phases the instances declare, if any
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class SeriesResult:
    """A complete series: its decision (an /assess-shaped answer with ``frames``) and its frames for the SR."""

    key: SeriesKey
    answer: AssessResponse
    frames: list[SeriesFrame]
    meta: ModelMetadata
    params: AssessParams
    method: str  # the saliency method of the frames' heatmaps, "none" without


def _order_of(source: Dataset) -> tuple[float, float, str]:
    def number(keyword: str) -> float:
        try:
            value = source.get(keyword)
            return float(value) if value not in (None, "") else math.inf
        except (TypeError, ValueError):
            return math.inf

    return number("InstanceNumber"), number("TriggerTime"), str(source.get("SOPInstanceUID", ""))


def _declared_phases(source: Dataset) -> int | None:
    """Cardiac Number of Images, else Number of Temporal Positions, when present and positive."""
    for keyword in ("CardiacNumberOfImages", "NumberOfTemporalPositions"):
        try:
            value = int(source.get(keyword) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return None


def series_answer(
    instances: list[tuple[Dataset, AssessResponse]], request_id: str, first_arrival: float
) -> tuple[AssessResponse, list[SeriesFrame]]:
    """The series' answer from its instances' answers, in series order (module docstring): frame ``index`` is the
    position in the series, the top-level fields are the deciding frame's (its heatmap left to its own results)."""
    frames: list[FrameResult] = []
    series_frames: list[SeriesFrame] = []
    for index, (source, answer) in enumerate(instances):
        frames.append(
            FrameResult(
                index=index,
                probability=answer.probability,
                decision=answer.decision,
                reason=answer.reason,
                point=answer.point,
                heatmap=None,
            )
        )
        point = (answer.point.x, answer.point.y) if answer.point else None
        series_frames.append(SeriesFrame(source, answer.probability, answer.decision, answer.reason, point))
    verdict = aggregate_frames(frames)
    worst = instances[verdict.worst_frame][1] if verdict.worst_frame is not None else None
    first = instances[0][1]
    label = None
    if verdict.decision != "unassessable":
        label = next((a.label for _, a in instances if a.decision == verdict.decision), None)
    response = AssessResponse(
        request_id=request_id,
        assessment_id=uuid.uuid4().hex,
        model=first.model,
        label=label,
        probability=worst.probability if worst else None,
        threshold=first.threshold,
        calibration=first.calibration,
        decision=verdict.decision,
        reason=verdict.reason,
        ood_score=worst.ood_score if worst else None,
        point=worst.point if worst else None,
        image=worst.image if worst else ImageSize(width=first.image.width, height=first.image.height),
        heatmap=None,
        frames=frames,
        worst_frame=verdict.worst_frame,
        timings_ms=Timings(queue=0.0, compute=0.0, total=round((time.monotonic() - first_arrival) * 1000, 3)),
    )
    return response, series_frames


class SeriesCollector:
    """Gathers assessed single-frame instances by series and hands each complete series to ``on_complete``."""

    def __init__(self, settle_s: float, on_complete: Callable[[SeriesResult], Awaitable[None]]) -> None:
        self.settle_s = settle_s
        self.on_complete = on_complete
        self._series: OrderedDict[SeriesKey, _Series] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(
        self,
        request_id: str,
        source: Dataset,
        answer: AssessResponse,
        meta: ModelMetadata,
        params: AssessParams,
    ) -> SeriesKey:
        """Record one assessed instance (its header without pixels and its answer)."""
        key = SeriesKey(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), answer.model.name)
        series = self._series.get(key)
        if series is None:
            series = _Series(key, meta, params, time.monotonic())
            self._series[key] = series
        self._series.move_to_end(key)
        if series.timer is not None:
            series.timer.cancel()
            series.timer = None
        series.instances[str(source.SOPInstanceUID)] = _Instance(source, answer, _order_of(source))
        series.declared = _declared_phases(source) or series.declared
        series.requests.add(request_id)
        series.meta, series.params = meta, params
        return key

    async def request_done(self, request_id: str, keys: set[SeriesKey]) -> list[SeriesResult]:
        """After a request's instances are assessed: the series it brought whole are complete now (their
        results made before the request is answered, and returned); the others wait to settle."""
        complete = []
        for key in keys:
            series = self._series.get(key)
            if series is None:
                continue
            if series.declared is not None:
                ready = len(series.instances) >= series.declared and bool(series.requests)
            else:
                ready = series.requests == {request_id} and series.requests_done == 0
            series.requests_done += 1
            if ready:
                result = self._complete(series, request_id)
                if result is not None:
                    await self.on_complete(result)
                    complete.append(result)
            elif series.timer is None:
                loop = asyncio.get_running_loop()
                series.timer = loop.call_later(self.settle_s, self._settled, key)
        self._forget_old()
        return complete

    def pending(self) -> int:
        """Series waiting to settle."""
        return sum(1 for s in self._series.values() if s.timer is not None)

    def close(self) -> None:
        """Shutting down: series still waiting to settle get no result (their instances have theirs)."""
        for series in self._series.values():
            if series.timer is not None:
                series.timer.cancel()
                series.timer = None
                log.info("series %s: shutting down before it settled; no series result", series.key.series_instance_uid)

    def _settled(self, key: SeriesKey) -> None:
        series = self._series.get(key)
        if series is None:
            return
        series.timer = None
        result = self._complete(series, f"series-{uuid.uuid4().hex[:12]}")
        if result is None:
            return
        task = asyncio.ensure_future(self._deliver(result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, result: SeriesResult) -> None:
        try:
            await self.on_complete(result)
        except Exception:  # the instances' own results stand; the series result is logged as lost
            log.exception("series %s: making its result failed", result.key.series_instance_uid)

    def _complete(self, series: _Series, request_id: str) -> SeriesResult | None:
        series.requests.clear()
        if len(series.instances) < 2:  # one image: its own SR is the answer
            return None
        ordered = sorted(series.instances.values(), key=lambda i: i.order)
        answer, frames = series_answer([(i.source, i.answer) for i in ordered], request_id, series.first_arrival)
        method = next((i.answer.heatmap.method for i in ordered if i.answer.heatmap is not None), "none")
        return SeriesResult(series.key, answer, frames, series.meta, series.params, method)

    def _forget_old(self) -> None:
        finished = [k for k, s in self._series.items() if s.timer is None and not s.requests]
        for key in finished[: max(0, len(finished) - MAX_FINISHED_SERIES)]:
            del self._series[key]
