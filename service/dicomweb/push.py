"""Pushing NormGate's result instances (Secondary Capture + SR) to a DICOMweb server with STOW-RS.

``NORMGATE_DICOMWEB_PUSH_URL`` names the server's DICOMweb root (Orthanc: ``http://host:8042/dicom-web``);
each result set is sent as one ``POST {root}/studies`` request, ``multipart/related; type="application/dicom"``
(DICOM PS3.18 §10.5), with ``Accept: application/dicom+json``.

The assessment never waits for the push: ``submit`` only appends to a bounded queue (a full queue drops the
new set, logs its SOP Instance UIDs and counts it) and one background task sends the sets in order. A failed
send is retried with exponential backoff when it may succeed later (connection errors, timeouts, 408, 429,
5xx); other answers (400, 401, 403, 409, …) are final. The server's Store Instances Response is read: a 202 or
a Failed SOP Sequence is logged with the failure reasons. Metrics: ``normgate_dicomweb_push_total{outcome}``
(pushed, partial, failed, dropped) and ``normgate_dicomweb_push_queue_depth``. Logs carry SOP Instance UIDs
and HTTP statuses only, never patient data or the Authorization value.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.dicomweb.multipart import DICOM_JSON, TAG_FAILED_SOP_SEQUENCE, TAG_FAILURE_REASON, build_multipart_related

log = logging.getLogger("normgate.dicomweb.push")

__all__ = ["DicomwebPusher", "PushJob"]

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class PushJob:
    instances: list[bytes]  # Part 10 files
    sop_instance_uids: list[str]  # for the logs


class DicomwebPusher:
    def __init__(
        self,
        root_url: str,
        *,
        queue_size: int = 64,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
        authorization: str | None = None,
        registry: CollectorRegistry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.studies_url = root_url.rstrip("/") + "/studies"
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._headers = {"Accept": DICOM_JSON}
        if authorization:
            self._headers["Authorization"] = authorization
        self._transport = transport
        self._queue: asyncio.Queue[PushJob] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.outcomes = Counter(
            "normgate_dicomweb_push_total",
            "Result sets (SC + SR of one image) pushed to the DICOMweb server, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "normgate_dicomweb_push_queue_depth", "Result sets waiting to be pushed.", registry=registry
        )

    # -- lifecycle (event loop) ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout_s, transport=self._transport)
        self._task = asyncio.create_task(self._run(), name="normgate-dicomweb-push")

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Give queued sets up to ``drain_timeout_s`` to go out, then stop (what is left is logged)."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout=drain_timeout_s)
        except TimeoutError:
            log.warning("dicomweb push: %d result sets not pushed at shutdown", self._queue.qsize())
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if self._client is not None:
            await self._client.aclose()

    # -- producers -------------------------------------------------------------------------------------------
    def submit(self, job: PushJob) -> bool:
        """Queue ``job``; False (and the set is dropped) when the queue is full. Never waits."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.outcomes.labels("dropped").inc()
            log.warning("dicomweb push queue full: dropped results %s", ", ".join(job.sop_instance_uids))
            return False
        self.queue_depth.set(self._queue.qsize())
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    # -- the sender ------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                outcome = await self.push(job)
                self.outcomes.labels(outcome).inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.outcomes.labels("failed").inc()
                log.error("dicomweb push of %s failed: %s", ", ".join(job.sop_instance_uids), type(exc).__name__)
            finally:
                self._queue.task_done()
                self.queue_depth.set(self._queue.qsize())

    async def push(self, job: PushJob) -> str:
        """Send one set, retrying as the module docstring says. Returns pushed | partial | failed."""
        assert self._client is not None, "start() first"
        body, content_type = build_multipart_related(job.instances, f"normgate-{uuid.uuid4().hex}")
        headers = {**self._headers, "Content-Type": content_type}
        uids = ", ".join(job.sop_instance_uids)
        for attempt in range(1, self.max_attempts + 1):
            reason: str
            try:
                response = await self._client.post(self.studies_url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            else:
                if response.status_code == 200:
                    failed = _failed_reasons(response)
                    if not failed:
                        log.info("dicomweb push of %s: stored", uids)
                        return "pushed"
                    log.warning("dicomweb push of %s: server reports failures %s", uids, failed)
                    return "partial"
                if response.status_code == 202:
                    log.warning("dicomweb push of %s: 202, failures %s", uids, _failed_reasons(response))
                    return "partial"
                if response.status_code not in RETRYABLE_STATUSES:
                    log.error("dicomweb push of %s refused with HTTP %d; not retried", uids, response.status_code)
                    return "failed"
                reason = f"HTTP {response.status_code}"
            if attempt == self.max_attempts:
                log.error("dicomweb push of %s failed after %d attempts (last: %s)", uids, attempt, reason)
                return "failed"
            delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
            log.warning("dicomweb push of %s: %s; retry %d in %.2f s", uids, reason, attempt + 1, delay)
            await asyncio.sleep(delay)
        return "failed"  # not reached: the loop returns on its last attempt


def _failed_reasons(response: httpx.Response) -> list[str]:
    """Failure Reasons of a Store Instances Response (hex), [] when none or the body is not DICOM JSON."""
    try:
        items = response.json().get(TAG_FAILED_SOP_SEQUENCE, {}).get("Value", [])
        return [f"0x{int(item[TAG_FAILURE_REASON]['Value'][0]):04X}" for item in items]
    except Exception:
        return []
