"""The HTTP server: uvicorn, with the two things it lacks (docs/operations.md, "Connections and shutdown").

* **A header-read timeout** (NORMGATE_HEADER_READ_TIMEOUT_S). uvicorn times out only idle keep-alive
  connections (NORMGATE_KEEP_ALIVE_TIMEOUT_S): a connection that opens and sends its request headers a byte at a
  time, or never, is held forever. :func:`http_protocol` arms a timer when a connection opens and when each
  request's first byte arrives, and disarms it when the headers are complete; when it fires, the client gets
  ``408 request_timeout`` and the connection is closed. (The body has its own limit,
  NORMGATE_BODY_READ_TIMEOUT_S, in ``service.api.upload``.)
* **Draining on SIGTERM.** uvicorn closes its listening socket at once, so a readiness probe or a load balancer
  sees "connection refused" rather than an answer. :class:`DrainingServer` instead marks the app as draining
  (``app.state.draining``): /readyz answers 503 at once and new requests other than probes get 503 not_ready
  ("send it again"), while the requests already accepted run to their end. When none is left, or after
  NORMGATE_SHUTDOWN_GRACE_S, uvicorn's own shutdown follows (listener closed, what remains cancelled with 503,
  lifespan shutdown). A second signal stops at once.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import Settings
from service.errors import error_body

log = logging.getLogger("normgate.server")


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keywords for these settings (``python -m service`` and the tests' fault server)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "proxy_headers": False,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        # C parser and libuv loop (pyproject): the event loop reads 15 MB DICOM bodies with less Python,
        # which is time the model thread does not wait for the GIL (docs/benchmarks.md).
        "http": http_protocol(settings.header_read_timeout_s),
        "loop": "uvloop",
    }


def http_protocol(header_read_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on each request's headers."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        timeout = header_read_timeout_s
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.timeout, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # no response of ours is being written
                detail = f"the request headers did not arrive within {self.timeout:g} s"
                body = json.dumps(error_body("request_timeout", detail), separators=(",", ":")).encode()
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            self.transport.close()

    HeaderTimeoutProtocol.__name__ = HeaderTimeoutProtocol.__qualname__ = "HeaderTimeoutProtocol"
    return HeaderTimeoutProtocol


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining before it stops accepting (see the module docstring)."""

    # Probes in flight are not work to wait for.
    _IDLE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, config: uvicorn.Config, grace_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.draining_since: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining_since is not None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)  # a second signal: uvicorn's shutdown now (a third: force)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it after a clean stop, as it does itself
        self.draining_since = time.monotonic()
        state = getattr(getattr(self.config, "loaded_app", None), "state", None)
        if state is not None:
            state.draining = True
        log.info("%s: draining; /readyz answers 503, accepted requests may finish", signal.Signals(sig).name)

    async def on_tick(self, counter: int) -> bool:
        if self.draining_since is not None and not self.should_exit:
            in_flight = self._requests_in_flight()
            drained_for = time.monotonic() - self.draining_since
            if in_flight == 0 or drained_for >= self.grace_s:
                if in_flight:
                    log.warning("grace of %g s over with %d requests in flight", self.grace_s, in_flight)
                # uvicorn's own shutdown waits for what is left, within what is left of the grace.
                self.config.timeout_graceful_shutdown = max(1, round(self.grace_s - drained_for))
                self.should_exit = True
        return await super().on_tick(counter)

    def _requests_in_flight(self) -> int:
        busy = 0
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is None or cycle.response_complete:
                continue
            if cycle.scope.get("path") not in self._IDLE_PATHS:
                busy += 1
        return busy


def serve(app: str, settings: Settings) -> None:
    """Run the ASGI app factory ``app`` ("module:function") with these settings until SIGTERM/SIGINT."""
    config = uvicorn.Config(app, factory=True, **uvicorn_options(settings))
    DrainingServer(config, grace_s=settings.shutdown_grace_s).run()
