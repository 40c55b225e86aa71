"""DICOM networking (DIMSE) as well as DICOMweb: a C-STORE listener, and the results sent back by C-STORE.

Many modalities and older PACS speak only DIMSE (PS3.7). With ``NORMGATE_DIMSE_PORT`` set, NormGate runs a
Storage SCP (pynetdicom) on that port with AE title ``NORMGATE_DIMSE_AE_TITLE``:

* An association is accepted only when its Called AE Title is NormGate's and, if ``NORMGATE_DIMSE_ALLOWED_AES``
  lists any, its Calling AE Title is one of them (A-ASSOCIATE-RJ otherwise: calling/called AE title not
  recognised).
* Each C-STORE request is handled exactly like one part of a STOW-RS request (``StowService.store``): the same
  checks, the same /assess path through the model's batching queue, the same result objects, the same
  durable outbox. The C-STORE response status is the STOW Failure Reason of the instance (PS3.4 Annex B.2.3):
  0x0000 success, 0xA700 out of resources (queue full, not ready, deadline, too large), 0xA900 data set does
  not match (missing UIDs), 0xC000 cannot understand (not decodable), 0x0122 SOP class not supported (no
  pixels), 0x0110 processing failure.
* The results (SC, SEG, SR) go, like every result set, to each configured destination through the outbox:
  ``NORMGATE_DICOMWEB_PUSH_URL`` (STOW-RS) and ``NORMGATE_DIMSE_RESULT_DESTINATION`` (``AE@host:port``, C-STORE
  by ``DimseStore.deliver``, channel ``dimse``), with the outbox's backoff, max age and restart safety.

pynetdicom runs each association in its own thread; the handler hands the instance to the event loop with
``asyncio.run_coroutine_threadsafe`` and waits for the outcome. pynetdicom's own logger is kept at WARNING: at
DEBUG it would print whole datasets, patient attributes included.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from models.saliency import DEFAULT_METHOD
from service.config import DIMSE_DESTINATION
from service.dicomweb.multipart import FailureReason, Part
from service.dicomweb.outbox import Delivery, OutboxItem
from service.dicomweb.results import COMPREHENSIVE_SR, SECONDARY_CAPTURE, SEGMENTATION
from service.dicomweb.stow import StowService
from service.serving.assessment import AssessParams

log = logging.getLogger("normgate.dimse")

__all__ = ["DimseDestination", "DimseListener", "DimseStore", "parse_destination"]

_AE_TITLE = re.compile(r"^[\x20-\x7e]{1,16}$")  # PS3.5 AE VR: 16 characters of the default repertoire
# C-STORE statuses a destination answers that may pass (PS3.4 B.2.3: 0xA7xx Refused: Out of Resources).
_RETRY_STATUS = re.compile(r"^0xA7[0-9A-F]{2}$")
_SUCCESS_OR_WARNING = {0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB007, 0xB006}


def _quiet_pynetdicom() -> None:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@dataclass(frozen=True)
class DimseDestination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(value: str) -> DimseDestination:
    """``AE@host:port`` (the AE title at most 16 characters, no backslash) → DimseDestination, or ValueError."""
    match = DIMSE_DESTINATION.fullmatch(value.strip())
    if not match or not _AE_TITLE.match(match.group(1)) or not 1 <= int(match.group(3)) <= 65535:
        raise ValueError(f"expected AE@host:port (AE title 1-16 characters, port 1-65535), got {value!r}")
    return DimseDestination(match.group(1).strip(), match.group(2).strip("[]"), int(match.group(3)))


class DimseListener:
    """The Storage SCP: every C-STORE assessed through ``StowService`` on the app's event loop."""

    def __init__(
        self,
        stow: StowService,
        *,
        host: str,
        port: int,
        ae_title: str,
        allowed_aes: list[str],
        model: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.stow = stow
        self.host, self.port = host, port
        self.ae_title = ae_title
        self.allowed_aes = allowed_aes
        self.model = model
        self.timeout_s = timeout_s
        self._server: ThreadedAssociationServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        _quiet_pynetdicom()
        self._loop = loop
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        if self.allowed_aes:
            ae.require_calling_aet = list(self.allowed_aes)
        for context in StoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_c_store)]
        )
        log.info(
            "DIMSE listener %s on %s:%d (calling AEs: %s)",
            self.ae_title,
            self.host,
            self.port,
            ", ".join(self.allowed_aes) or "any",
        )

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_c_store(self, event: Any) -> int:
        """pynetdicom's thread: the C-STORE response status for one instance."""
        assert self._loop is not None
        request_id = uuid.uuid4().hex
        try:
            body = event.encoded_dataset(include_meta=True)
        except Exception:
            return FailureReason.CANNOT_UNDERSTAND
        calling = str(event.assoc.requestor.ae_title).strip()
        future = asyncio.run_coroutine_threadsafe(self._assess(body, request_id, calling), self._loop)
        try:
            return future.result(timeout=self.timeout_s)
        except Exception as exc:
            future.cancel()
            log.error("dimse %s: C-STORE from %s failed: %s", request_id, calling, type(exc).__name__)
            return FailureReason.PROCESSING_FAILURE

    async def _assess(self, body: bytes, request_id: str, calling_ae: str) -> int:
        params = AssessParams(model=self.model, method=DEFAULT_METHOD, heatmap="png", source="dimse", client=calling_ae)
        try:
            self.stow.assessor.check(params)
        except Exception as exc:  # not ready, unknown model: nothing was assessed
            log.warning("dimse %s: refused before assessment: %s", request_id, type(exc).__name__)
            return FailureReason.OUT_OF_RESOURCES
        [outcome] = await self.stow.store(
            [Part(content_type=None, body=body, index=0)],
            None,
            params,
            request_id,
            time.monotonic(),
            None,
            retrieve_base="",
        )
        return 0x0000 if outcome.stored else int(outcome.failure_reason or FailureReason.PROCESSING_FAILURE)


class DimseStore:
    """One C-STORE association per result set to the configured destination (the outbox's ``dimse`` channel)."""

    def __init__(self, destination: DimseDestination, ae_title: str, timeout_s: float = 30.0) -> None:
        self.destination = destination
        self.ae_title = ae_title
        self.timeout_s = timeout_s

    async def deliver(self, item: OutboxItem) -> tuple[Delivery, str]:
        return await asyncio.to_thread(self._send, item.instances)

    def _send(self, instances: list[bytes]) -> tuple[Delivery, str]:
        _quiet_pynetdicom()
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class in (SECONDARY_CAPTURE, SEGMENTATION, COMPREHENSIVE_SR):
            ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")  # Explicit VR Little Endian
        where = self.destination
        assoc = ae.associate(where.host, where.port, ae_title=where.ae_title)
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "no association (connection or timeout)"
            return Delivery.RETRY, f"{where}: {reason}"
        try:
            refused: list[str] = []
            for part10 in instances:
                dataset = pydicom.dcmread(io.BytesIO(part10))
                status = assoc.send_c_store(dataset)
                code = int(status.Status) if status and "Status" in status else None
                if code is None:
                    return Delivery.RETRY, f"{where}: no C-STORE response"
                if code in _SUCCESS_OR_WARNING:
                    continue
                if _RETRY_STATUS.match(f"0x{code:04X}"):
                    return Delivery.RETRY, f"{where}: C-STORE status 0x{code:04X}"
                refused.append(f"0x{code:04X}")
            if refused:
                return (Delivery.REFUSED if len(refused) == len(instances) else Delivery.PARTIAL), (
                    f"{where}: C-STORE statuses {refused}"
                )
            return Delivery.STORED, f"{where}: stored"
        finally:
            assoc.release()
