"""The decode worker process: decodes one upload at a time with :mod:`models.imaging` and prepares it for a
model, where a decode can be stopped (the server kills the process) and whatever memory it took goes with it.

The server (``service.ingest.decode_pool``) starts these processes from a fork server that preloaded this
module (numpy, Pillow, pydicom, torch), so a start costs a fork (~10 ms), not an interpreter and its imports,
and the imported libraries' pages are shared with the fork server.

Protocol, on a duplex socket pair, one job at a time:

* server → worker: ``(job, limits, size)`` with ``job`` a :class:`WorkerJob` and ``limits`` a ``DecodeLimits``
  as a tuple, then the body's ``size`` bytes raw on the socket, read straight into one buffer
  (``Connection.recv_bytes`` would allocate a buffer of the whole remaining size for every ~200 KB read: 75
  times 15 MB for a radiograph);
* worker → server, one of:

  - ``("decoded", fields, grid, pixels_shape, statistics)``: the decoded image's fields (``DecodedImage``
    without its pixels), the model's input (``preprocess_batch`` of the pixels: [3, h, w] float32, ~0.8 MB for
    256²; [F, 3, h, w] for the F frames of a multi-frame DICOM) when the job named a grid, the assessability
    statistics (one per frame, a list, for a multi-frame image), and the pixels' shape when the job asked for
    them; the pixels then follow as raw
    bytes on the socket (``os.write`` of the array, read straight into the server's array). /assess asks for
    the grid only: what crosses is the grid, not the 30 MB of a radiograph's float32 pixels (a copy the
    server would make while holding the GIL the model thread needs);
  - ``("display", png, width, height, frames)`` for display jobs (POST /render; a multi-frame image's PNG
    holds its frames stacked top to bottom);
  - ``("refused", code, detail, estimated_bytes)`` when the decoder refuses the image (its ``ImageError``);
  - ``("failed", text)`` for anything else (a bug).

The worker ignores SIGINT and SIGTERM (the server decides when it stops: it closes the socket, and the worker
exits on end-of-file) and runs under an address-space limit (``RLIMIT_AS``): the decode budget is an
estimate from the header, the limit is the backstop if an image costs more than estimated (a MemoryError,
answered 413).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

from models.imaging.assessability import ImageStatistics, image_statistics
from models.imaging.decode import decode_image, to_display_png
from models.imaging.errors import BadImage, ImageError
from models.imaging.limits import DecodeLimits

__all__ = ["PRELOAD", "GridSpec", "WorkerJob", "limit_address_space", "read_exactly", "serve", "write_all"]

# What the fork server imports once for every worker it forks: this module, and torch for the resize to the
# model grid (imported here lazily, so that importing this module alone stays light).
PRELOAD = [__name__, "models.imaging.grid"]


@dataclass(frozen=True)
class GridSpec:
    """A model's input: the grid size and the normalisation of its checkpoint."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class WorkerJob:
    content_type: str | None
    display: bool = False  # answer the 8-bit display PNG (POST /render)
    grid: GridSpec | None = None  # answer this model's input
    keep_pixels: bool = False  # also send the decoded float32 pixels (the DICOMweb Secondary Capture)


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
    """The worker's loop: take a job, answer it, until the server closes the socket."""
    import torch  # preloaded by the fork server with models.imaging.grid (PRELOAD)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)  # one decode per process; the model's threads live in the server
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:  # ``nice`` is the target (the server's niceness + NORMGATE_DECODE_NICE), not an increment
        try:
            os.nice(nice - current)
        except OSError:  # a sandbox without setpriority: decode at normal priority rather than not at all
            pass
    limit_address_space(memory_headroom_bytes)
    while True:
        try:
            job, limits_fields, size = conn.recv()
            received = bytearray(size)
            read_exactly(conn.fileno(), memoryview(received))
            body = bytes(received)
            del received
        except (EOFError, OSError):
            return
        try:
            answer(conn, body, job, DecodeLimits(*limits_fields))
        except (EOFError, OSError):  # the server went away mid-answer
            return
        finally:
            del body


def answer(conn: Connection, body: bytes, job: WorkerJob, limits: DecodeLimits) -> None:
    grid = None
    statistics: ImageStatistics | list[ImageStatistics] | None = None
    try:
        # Every job takes multi-frame DICOM (NORMGATE_MAX_FRAMES frames at most): /assess assesses each frame.
        decoded = decode_image(body, job.content_type, limits, multi_frame=True)
        if job.display and decoded.number_of_frames == 0:  # /assess answers it unassessable (no_frames)
            raise BadImage("the DICOM declares Number of Frames 0: it holds no frame to display")
        if job.display:
            png = to_display_png(decoded)
            conn.send(("display", png, decoded.width, decoded.height, max(decoded.number_of_frames, 1)))
            return
        if job.grid is not None:
            from models.imaging.grid import preprocess_batch  # preloaded (PRELOAD)

            spec = job.grid
            if decoded.pixels.size:
                grid = preprocess_batch(decoded.frames, spec.input_size, spec.mean, spec.std).numpy()
                if decoded.pixels.ndim == 2:
                    grid = grid[0]
        # The assessability statistics need the full-resolution pixels, which stay in this process.
        if decoded.pixels.ndim == 3:
            statistics = [image_statistics(frame) for frame in decoded.frames]
        elif decoded.pixels.size:
            statistics = image_statistics(decoded.pixels)
    except ImageError as exc:
        conn.send(("refused", exc.code, exc.detail, getattr(exc, "estimated_bytes", None)))
        return
    except MemoryError:
        conn.send(("refused", "too_large", "the image needs more memory than a decode may take", None))
        return
    except Exception as exc:  # decode_image lets nothing else out; this is a bug, reported as one
        conn.send(("failed", f"{type(exc).__name__}: {exc}"[:300]))
        return
    fields: dict[str, Any] = {f.name: getattr(decoded, f.name) for f in dataclasses.fields(decoded)}
    pixels: npt.NDArray[np.float32] = fields.pop("pixels")
    conn.send(("decoded", fields, grid, pixels.shape if job.keep_pixels else None, statistics))
    if job.keep_pixels:
        write_all(conn.fileno(), np.ascontiguousarray(pixels).data.cast("B"))


def write_all(fd: int, data: memoryview) -> None:
    sent = 0
    while sent < len(data):
        sent += os.write(fd, data[sent:])


def read_exactly(fd: int, into: memoryview) -> None:
    """Fill ``into`` from ``fd`` (a body, or the raw pixels after a "decoded" message), without copies."""
    received = 0
    while received < len(into):
        count = os.readv(fd, [into[received:]])
        if count == 0:
            raise EOFError("the decode worker closed the connection mid-answer")
        received += count
