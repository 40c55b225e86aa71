"""Delivering NormGate's result instances (SC, SEG, SR) to a DICOMweb server with STOW-RS.

``NORMGATE_DICOMWEB_PUSH_URL`` names the server's DICOMweb root (Orthanc: ``http://host:8042/dicom-web``);
each result set is one ``POST {root}/studies`` request, ``multipart/related; type="application/dicom"``
(DICOM PS3.18 §10.5), with ``Accept: application/dicom+json``.

The assessment never waits for the archive: result sets go to the durable outbox (``service.dicomweb.outbox``),
whose sender calls ``DicomwebPush.deliver`` for one attempt at a time. An attempt is retried later when it may
succeed then (connection errors, timeouts, 408, 425, 429, 5xx); other answers (400, 401, 403, 409, …) are final.
The server's Store Instances Response is read: a 202 or a Failed SOP Sequence is a ``partial`` delivery whose
Failure Reasons are logged. Logs carry SOP Instance UIDs and HTTP statuses only, never patient data or the
Authorization value.
"""

from __future__ import annotations

import uuid

import httpx

from service.dicomweb.multipart import DICOM_JSON, TAG_FAILED_SOP_SEQUENCE, TAG_FAILURE_REASON, build_multipart_related
from service.dicomweb.outbox import Delivery, OutboxItem

__all__ = ["RETRYABLE_STATUSES", "DicomwebPush"]

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class DicomwebPush:
    def __init__(
        self,
        root_url: str,
        *,
        timeout_s: float = 30.0,
        authorization: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.studies_url = root_url.rstrip("/") + "/studies"
        self.timeout_s = timeout_s
        self._headers = {"Accept": DICOM_JSON}
        if authorization:
            self._headers["Authorization"] = authorization
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout_s, transport=self._transport)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deliver(self, item: OutboxItem) -> tuple[Delivery, str]:
        """One STOW-RS attempt for a result set: (what it came to, a reason for the log)."""
        assert self._client is not None, "start() first"
        body, content_type = build_multipart_related(item.instances, f"normgate-{uuid.uuid4().hex}")
        headers = {**self._headers, "Content-Type": content_type}
        try:
            response = await self._client.post(self.studies_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Delivery.RETRY, type(exc).__name__
        if response.status_code == 200:
            failed = _failed_reasons(response)
            return (Delivery.PARTIAL, f"server reports failures {failed}") if failed else (Delivery.STORED, "200")
        if response.status_code == 202:
            return Delivery.PARTIAL, f"202, failures {_failed_reasons(response)}"
        if response.status_code in RETRYABLE_STATUSES:
            return Delivery.RETRY, f"HTTP {response.status_code}"
        return Delivery.REFUSED, f"HTTP {response.status_code}"


def _failed_reasons(response: httpx.Response) -> list[str]:
    """Failure Reasons of a Store Instances Response (hex), [] when none or the body is not DICOM JSON."""
    try:
        items = response.json().get(TAG_FAILED_SOP_SEQUENCE, {}).get("Value", [])
        return [f"0x{int(item[TAG_FAILURE_REASON]['Value'][0]):04X}" for item in items]
    except Exception:
        return []
