"""The STOW-RS store transaction: every received instance assessed like an /assess upload, results as DICOM.

For each part of a request (all parts concurrently, so they meet in the model's batching queue like
concurrent /assess requests):

1. cheap checks on the identifiers only (``read_instance_ids``): part media type, Pixel Data present, SOP
   Class/Instance, Study and Series UIDs present, Study Instance UID equal to the one in the URL;
2. ``Assessor.assess_keeping_image`` — exactly the /assess path: decode in the decode pool, the model's
   queue and batches, the default saliency method, a heatmap;
3. the Secondary Capture and the SR (``service.dicomweb.results``), built in a worker thread, kept for WADO-RS
   retrieval (``ResultStore``) and written to the durable outbox for the push server when one is configured
   (before the STOW answer goes out: what the sender was told was stored has its results on disk).

Single-frame instances of one series (a cine stored frame by frame) are also collected
(``service.dicomweb.series``): when the series is complete its decision and one SR referencing every frame are
made, published and pushed like an instance's results.

Failures become the instance's Failure Reason (``service.dicomweb.FailureReason``); nothing an instance
carries can fail the whole request. Logs name request ids and SOP Instance UIDs only — never a patient
attribute, and not even an exception's message (library messages may quote element values).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from service.dicomweb.multipart import (
    DICOM_MEDIA_TYPE,
    FailureReason,
    InstanceIds,
    Part,
    StowOutcome,
    read_instance_ids,
)
from service.dicomweb.outbox import OutboxSender
from service.dicomweb.results import (
    DicomResults,
    ResultNaming,
    build_results,
    build_series_report,
    dataset_bytes,
    read_source_header,
)
from service.dicomweb.series import SeriesCollector, SeriesKey, SeriesResult
from service.errors import (
    ApiError,
    BadImage,
    BadParameter,
    InternalError,
    NotReady,
    Overloaded,
    RequestTimeout,
    TooLarge,
    UnsupportedMediaType,
)
from service.ingest.upload import Upload
from service.observability.metrics import ServiceMetrics
from service.serving.assessment import Assessor, AssessParams
from service.serving.worker import ModelWorker

log = logging.getLogger("normgate.dicomweb")

__all__ = ["ResultStore", "SharedResults", "StoredResult", "StowService"]


@dataclass(frozen=True)
class StoredResult:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    part10: bytes


class SharedResults(Protocol):
    """Where result instances are kept for every replica (the store, ``service.db.results``). Blocking calls:
    ``ResultStore`` runs them in a thread."""

    def save(self, study_uid: str, series_uid: str, sop_uid: str, part10: bytes) -> None: ...

    def load(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes | None: ...


class ResultStore:
    """Recent result instances by SOP Instance UID, bounded by total bytes (oldest dropped first), in front of
    ``shared`` (when given) that every replica reads: ``put`` also saves there in the background, ``lookup``
    asks it when this process's memory does not hold the instance.

    The memory part lives on the event loop thread only, so it needs no lock. ``capacity_bytes == 0`` keeps
    nothing in memory.
    """

    def __init__(self, capacity_bytes: int, shared: SharedResults | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self.shared = shared
        self._saving: set[asyncio.Future[None]] = set()

    def put(self, item: StoredResult) -> bool:
        """Keep ``item``; True when it can be retrieved (from memory or the shared store)."""
        if self.shared is not None:
            self._save_shared(item)
        if len(item.part10) > self.capacity_bytes:
            return self.shared is not None
        old = self._items.pop(item.sop_instance_uid, None)
        if old is not None:
            self.size_bytes -= len(old.part10)
        self._items[item.sop_instance_uid] = item
        self.size_bytes += len(item.part10)
        while self.size_bytes > self.capacity_bytes:
            _, dropped = self._items.popitem(last=False)
            self.size_bytes -= len(dropped.part10)
        return True

    def get(self, study_uid: str, series_uid: str, sop_uid: str) -> StoredResult | None:
        item = self._items.get(sop_uid)
        if item is None or (item.study_instance_uid, item.series_instance_uid) != (study_uid, series_uid):
            return None
        return item

    async def lookup(self, study_uid: str, series_uid: str, sop_uid: str) -> StoredResult | None:
        """``get``, then the shared store (another replica may have made it); None when neither has it."""
        item = self.get(study_uid, series_uid, sop_uid)
        if item is not None or self.shared is None:
            return item
        try:
            part10 = await asyncio.to_thread(self.shared.load, study_uid, series_uid, sop_uid)
        except Exception as exc:
            log.warning("result store unreachable for %s (%s)", sop_uid, type(exc).__name__)
            return None
        return StoredResult(study_uid, series_uid, sop_uid, part10) if part10 is not None else None

    def _save_shared(self, item: StoredResult) -> None:
        assert self.shared is not None
        future = asyncio.get_running_loop().run_in_executor(
            None,
            self.shared.save,
            item.study_instance_uid,
            item.series_instance_uid,
            item.sop_instance_uid,
            item.part10,
        )
        self._saving.add(future)
        future.add_done_callback(self._saved)

    def _saved(self, future: asyncio.Future[None]) -> None:
        self._saving.discard(future)
        if not future.cancelled() and future.exception() is not None:
            # Only this replica's memory has it now; WADO-RS elsewhere answers 404 for it.
            log.warning("a result instance could not be saved to the store (%s)", type(future.exception()).__name__)

    async def drain(self) -> None:
        """Wait for the saves still in flight (shutdown)."""
        if self._saving:
            await asyncio.gather(*list(self._saving), return_exceptions=True)

    def __len__(self) -> int:
        return len(self._items)


def _failure_for(exc: Exception) -> tuple[int, str]:
    """(Failure Reason, API error code) for an error the /assess path raised for one instance."""
    if isinstance(exc, TooLarge):
        return FailureReason.OUT_OF_RESOURCES, "too_large"
    if isinstance(exc, (BadImage, UnsupportedMediaType, BadParameter)):  # the decoder refused the image
        return FailureReason.CANNOT_UNDERSTAND, exc.code
    if isinstance(exc, (Overloaded, NotReady, RequestTimeout)):
        return FailureReason.OUT_OF_RESOURCES, exc.code
    if isinstance(exc, InternalError):
        return FailureReason.PROCESSING_FAILURE, exc.code
    if isinstance(exc, ApiError):  # e.g. the client went away (499): nothing was computed for it
        return FailureReason.OUT_OF_RESOURCES, exc.code
    return FailureReason.PROCESSING_FAILURE, "internal"


class StowService:
    def __init__(
        self,
        assessor: Assessor,
        results: ResultStore,
        senders: list[OutboxSender],
        app_version: str,
        metrics: ServiceMetrics,
        series_settle_s: float = 10.0,
    ) -> None:
        self.assessor = assessor
        self.results = results
        self.senders = senders  # one per configured destination: STOW-RS push, DIMSE C-STORE
        self.app_version = app_version
        self.metrics = metrics
        self.series = SeriesCollector(series_settle_s, self._series_complete)
        # The JSON description of each series result made, by key (the STOW answer of the request that
        # completed it quotes it).
        self._series_described: dict[SeriesKey, dict[str, Any]] = {}
        self._retrieve_base = ""

    async def store(
        self,
        parts: list[Part],
        study_uid: str | None,
        params: AssessParams,
        request_id: str,
        arrived: float,
        disconnected: asyncio.Future[None] | None,
        retrieve_base: str,
        series_out: list[dict[str, Any]] | None = None,
    ) -> list[StowOutcome]:
        """One outcome per part, in request order. ``params`` were checked by the caller (``Assessor.check``).
        ``series_out`` receives the results of the series this request completed (module docstring)."""
        worker = self.assessor.check(params)
        if retrieve_base:
            self._retrieve_base = retrieve_base
        keys: set[SeriesKey] = set()
        outcomes = await asyncio.gather(
            *(
                self._store_one(part, study_uid, params, worker, request_id, arrived, disconnected, retrieve_base, keys)
                for part in parts
            )
        )
        stored = sum(o.stored for o in outcomes)
        log.info(
            "stow %s: %d instances, %d assessed, %d failed", request_id, len(outcomes), stored, len(outcomes) - stored
        )
        for result in await self.series.request_done(request_id, keys):
            described = self._series_described.pop(result.key, None)
            if series_out is not None and described is not None:
                series_out.append(described)
        return list(outcomes)

    async def _series_complete(self, result: SeriesResult) -> None:
        """A complete series: its decision audited, its SR built, kept for WADO-RS and pushed."""
        key, answer, meta = result.key, result.answer, result.meta
        worker = self.assessor.registry.get(key.model)
        if worker is not None:
            self.assessor.record_decision(
                answer, worker, result.params, None, series=(key.study_instance_uid, key.series_instance_uid)
            )
        report = await asyncio.to_thread(
            build_series_report,
            result.frames,
            answer,
            result.method,
            meta.positive_class,
            list(meta.input_size),
            self.app_version,
            ResultNaming.for_model(meta),
        )
        part10 = await asyncio.to_thread(dataset_bytes, report)
        item = StoredResult(key.study_instance_uid, str(report.SeriesInstanceUID), str(report.SOPInstanceUID), part10)
        kept = self.results.put(item)
        push = await self._send_files([item.sop_instance_uid], [part10])
        log.info(
            "series %s (%d frames) assessed: %s (SR %s)",
            key.series_instance_uid,
            len(result.frames),
            answer.decision,
            item.sop_instance_uid,
        )
        self._series_described[key] = {
            "study_instance_uid": key.study_instance_uid,
            "series_instance_uid": key.series_instance_uid,
            "assessment": answer.model_dump(mode="json"),
            "sop_instance_uids": [str(frame.source.SOPInstanceUID) for frame in result.frames],
            "structured_report": {
                "sop_class_uid": str(report.SOPClassUID),
                "sop_instance_uid": item.sop_instance_uid,
                "series_instance_uid": item.series_instance_uid,
                "retrieve_url": (
                    f"{self._retrieve_base}/studies/{key.study_instance_uid}/series/{item.series_instance_uid}"
                    f"/instances/{item.sop_instance_uid}"
                )
                if kept and self._retrieve_base
                else None,
            },
            "push": push,
        }
        if len(self._series_described) > 64:  # results completed by settling are not quoted by any answer
            self._series_described.pop(next(iter(self._series_described)))

    async def _store_one(
        self,
        part: Part,
        study_uid: str | None,
        params: AssessParams,
        worker: ModelWorker,
        request_id: str,
        arrived: float,
        disconnected: asyncio.Future[None] | None,
        retrieve_base: str,
        series_keys: set[SeriesKey],
    ) -> StowOutcome:
        ids = await asyncio.to_thread(read_instance_ids, part.body)
        outcome = StowOutcome(index=part.index, ids=ids)
        refusal = _refusal(part, ids, study_uid)
        if refusal is not None:
            outcome.failure_reason, outcome.error, outcome.detail = refusal
            self._log_failure(request_id, outcome)
            return outcome
        try:
            decoded, answer = await self.assessor.assess_keeping_image(
                Upload(body=part.body, content_type=DICOM_MEDIA_TYPE),
                params,
                worker,
                f"{request_id}-{part.index}",
                arrived,
                disconnected,
            )
        except ApiError as exc:
            outcome.failure_reason, outcome.error = _failure_for(exc)
            outcome.detail = exc.detail
            self._log_failure(request_id, outcome)
            return outcome
        except Exception as exc:
            outcome.failure_reason, outcome.error = FailureReason.PROCESSING_FAILURE, "internal"
            outcome.detail = f"assessing the instance failed ({type(exc).__name__}); quote the request id"
            self._log_failure(request_id, outcome)
            return outcome
        if not ids.readable:  # the decoder took bytes whose identifiers could not be read: nothing to name
            outcome.failure_reason, outcome.error = FailureReason.DATA_SET_MISMATCH, "bad_image"
            outcome.detail = "the instance's SOP Class, SOP Instance, Study and Series UIDs could not be read"
            self._log_failure(request_id, outcome)
            return outcome
        # The model that answered: the DICOM header may have routed the instance away from the default one.
        meta = (self.assessor.registry.get(answer.model.name) or worker).meta
        assert meta is not None  # the assessment above ran on this worker, so it is loaded
        try:
            source = await asyncio.to_thread(read_source_header, part.body)
            results: DicomResults = await asyncio.to_thread(
                lambda: build_results(
                    source,
                    decoded.pixels,
                    answer,
                    meta.positive_class,
                    list(meta.input_size),
                    self.app_version,
                    ResultNaming.for_model(meta),
                )
            )
            files = await asyncio.to_thread(results.part10_files)
        except Exception as exc:
            outcome.failure_reason, outcome.error = FailureReason.PROCESSING_FAILURE, "internal"
            outcome.detail = f"building the result instances failed ({type(exc).__name__})"
            self._log_failure(request_id, outcome)
            return outcome
        outcome.extras = self._publish(ids, answer.model_dump(mode="json"), results, files, retrieve_base)
        outcome.extras["push"] = await self._send(results, files)
        if answer.frames is None:  # a single frame: part of its series' result when the series is complete
            series_keys.add(self.series.add(request_id, source, answer, meta, params))
        log.info(
            "stow %s: instance %s assessed: %s (SC %s, SR %s)",
            request_id,
            ids.sop_instance_uid,
            answer.decision,
            results.uids.sc_instance,
            results.uids.sr_instance,
        )
        return outcome

    def _publish(
        self, ids: InstanceIds, answer: dict[str, Any], results: DicomResults, files: list[bytes], retrieve_base: str
    ) -> dict[str, Any]:
        """Keep the results for WADO-RS; the instance's JSON result."""
        study = ids.study_instance_uid
        assert study is not None  # _refusal turned away readable instances without one
        described: dict[str, Any] = {"segmentation": None}
        roles = {"OT": "secondary_capture", "SEG": "segmentation", "SR": "structured_report"}
        for ds, part10 in zip(results.datasets, files):
            item = StoredResult(study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), part10)
            kept = self.results.put(item)
            described[roles[str(ds.Modality)]] = {
                "sop_class_uid": str(ds.SOPClassUID),
                "sop_instance_uid": item.sop_instance_uid,
                "series_instance_uid": item.series_instance_uid,
                "retrieve_url": (
                    f"{retrieve_base}/studies/{study}/series/{item.series_instance_uid}/instances/"
                    f"{item.sop_instance_uid}"
                )
                if kept
                else None,
            }
        return {"assessment": answer, **described}

    async def _send(self, results: DicomResults, files: list[bytes]) -> str:
        """Hand the result set to the outbox of every configured destination (durably, before the answer):
        queued (by all) | dropped (an outbox was full) | failed (an outbox could not be written) |
        not_configured (no destination)."""
        return await self._send_files([str(ds.SOPInstanceUID) for ds in results.datasets], files)

    async def _send_files(self, uids: list[str], files: list[bytes]) -> str:
        if not self.senders:
            return "not_configured"
        states = []
        for sender in self.senders:
            try:
                states.append("queued" if await sender.submit(uids, files) else "dropped")
            except Exception as exc:  # a full disk, a broken state volume: the assessment itself stands
                log.error(
                    "%s outbox write for results %s failed: %s", sender.channel, ", ".join(uids), type(exc).__name__
                )
                states.append("failed")
        return next((state for state in ("failed", "dropped") if state in states), "queued")

    def _log_failure(self, request_id: str, outcome: StowOutcome) -> None:
        if outcome.error:
            self.metrics.rejected.labels(outcome.error).inc()
        log.warning(
            "stow %s: instance %s (part %d) failed: %s, 0x%04X",
            request_id,
            outcome.ids.sop_instance_uid or "?",
            outcome.index,
            outcome.error,
            outcome.failure_reason,
        )


def _refusal(part: Part, ids: InstanceIds, study_uid: str | None) -> tuple[int, str, str] | None:
    """(Failure Reason, code, detail) when the identifiers alone rule the instance out, else None."""
    if part.content_type not in (None, DICOM_MEDIA_TYPE):
        return (
            FailureReason.CANNOT_UNDERSTAND,
            "unsupported_media_type",
            f"part {part.index + 1} is {part.content_type}; STOW-RS parts must be application/dicom",
        )
    if not ids.readable:
        return None  # let the decoder say what is wrong with the bytes
    if not ids.has_pixel_data:
        return (
            FailureReason.SOP_CLASS_NOT_SUPPORTED,
            "bad_image",
            f"SOP Class {ids.sop_class_uid or 'unknown'} instance has no Pixel Data: NormGate assesses images",
        )
    missing = [
        name
        for name, value in (
            ("SOP Class UID", ids.sop_class_uid),
            ("SOP Instance UID", ids.sop_instance_uid),
            ("Study Instance UID", ids.study_instance_uid),
            ("Series Instance UID", ids.series_instance_uid),
        )
        if not value
    ]
    if missing:
        return (FailureReason.DATA_SET_MISMATCH, "bad_image", "the instance lacks a valid " + ", ".join(missing))
    if study_uid is not None and ids.study_instance_uid != study_uid:
        return (
            FailureReason.DATA_SET_MISMATCH,
            "study_mismatch",
            f"the instance belongs to study {ids.study_instance_uid}, not {study_uid} named in the URL",
        )
    return None
