"""The decode worker process: decodes one upload at a time with :mod:`models.imaging`, where a decode can be
stopped (the server kills the process) and whatever memory it took goes with it.

The server (``service.ingest.decode_pool``) starts these processes from a fork server that preloaded this
module, so a start costs a fork (~10 ms), not an interpreter and its imports. This module and what it imports
never load torch (``models.imaging.decode`` does not; ~550 MB less per process): resizing to the model grid
happens in the server, on the pixels it receives.

Protocol, on a duplex pipe, one job at a time:

* server → worker: ``(display, content_type, limits)`` with ``limits`` a :class:`DecodeLimits` as a tuple,
  then the body as one bytes message;
* worker → server: ``("pixels", fields, shape)`` followed by the float32 pixels as one bytes message (a kernel
  copy, no pickling), ``("display", png, width, height)`` for ``display`` jobs, ``("refused", code, detail,
  estimated_bytes)`` when the decoder refuses the image (its ``ImageError``), or ``("failed", text)``.

The worker ignores SIGINT and SIGTERM (the server decides when it stops: it closes the pipe, and the worker
exits on end-of-file) and runs under an address-space limit (``RLIMIT_AS``): the decode budget is an
estimate from the header, the limit is the backstop if an image costs more than estimated (a MemoryError,
answered 413).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
from multiprocessing.connection import Connection
from typing import Any

from models.imaging.decode import decode_image, to_display_png
from models.imaging.errors import ImageError
from models.imaging.limits import DecodeLimits

__all__ = ["serve"]


def _virtual_size() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def limit_address_space(extra_bytes: int) -> None:
    """Cap this process's address space at what it maps now plus ``extra_bytes`` (Linux; elsewhere nothing)."""
    if extra_bytes <= 0 or not os.path.exists("/proc/self/status"):
        return
    cap = _virtual_size() + extra_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def serve(conn: Connection, nice: int, memory_headroom_bytes: int) -> None:
    """The worker's loop: take a job, answer it, until the server closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:  # a sandbox without setpriority: decode at normal priority rather than not at all
            pass
    limit_address_space(memory_headroom_bytes)
    while True:
        try:
            display, content_type, limits_fields = conn.recv()
            body = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            answer(conn, body, content_type, DecodeLimits(*limits_fields), display)
        except (EOFError, OSError):  # the server went away mid-answer
            return
        finally:
            del body


def answer(conn: Connection, body: bytes, content_type: str | None, limits: DecodeLimits, display: bool) -> None:
    try:
        decoded = decode_image(body, content_type, limits)
        if display:
            png = to_display_png(decoded)
            conn.send(("display", png, decoded.width, decoded.height))
            return
    except ImageError as exc:
        conn.send(("refused", exc.code, exc.detail, getattr(exc, "estimated_bytes", None)))
        return
    except MemoryError:
        conn.send(("refused", "too_large", "the image needs more memory than a decode may take", None))
        return
    except Exception as exc:  # decode_image lets nothing else out; this is a bug, reported as one
        conn.send(("failed", f"{type(exc).__name__}: {exc}"[:300]))
        return
    pixels = decoded.pixels
    fields: dict[str, Any] = {f.name: getattr(decoded, f.name) for f in dataclasses.fields(decoded)}
    del fields["pixels"]
    conn.send(("pixels", fields, pixels.shape))
    conn.send_bytes(pixels.data.cast("B"))
