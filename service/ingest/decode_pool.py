"""The decode pool: uploads are decoded in worker processes that can be stopped, in two lanes, within a memory
budget checked from the header first (docs/ingestion.md, "Decode budget"; docs/operations.md, "Memory").

* **Before any decode**, on the event loop: :func:`models.imaging.decode.inspect_upload` reads the header
  (PNG IHDR, JPEG SOF, DICOM Rows × Columns × …) and refuses what is over NORMGATE_MAX_PIXELS or whose
  estimated peak memory is over NORMGATE_MAX_DECODE_MB: 413 without touching a worker.
* **Two lanes.** An upload whose estimate is at most NORMGATE_DECODE_LARGE_MB goes to the *ordinary* lane
  (NORMGATE_DECODE_WORKERS processes at NORMGATE_DECODE_NICE); a larger one to the *large* lane (one process
  at niceness 19, a short queue), so ordinary images never wait behind a large one. A header the server could
  not read goes to the ordinary lane, whose worker refuses anything over the lane's ceiling with the estimate
  it parsed; the pool then sends it to the large lane.
* **Deadlines.** Waiting for a worker and decoding both end at the request's deadline: a decode still running
  then is abandoned (the process is killed, so its memory is returned at once, and a fresh one forked), and the
  client gets 504. A client that disconnects stops its decode the same way (499 in the logs).
* **Backlog.** Each lane admits its workers' count plus a queue; one more is refused 503 at once. While the
  ordinary lane's queue is full, ``saturated`` is true and /readyz answers 503.
* **Results.** The worker also prepares the image for the model (``preprocess_batch``) and sends back the
  model's input and the image's fields, not its pixels (``decode_worker``); callers that need the pixels
  themselves (the DICOMweb Secondary Capture) ask for them. On the server's side each worker has a thread (at
  the decode niceness) that sends the body and waits for the answer, off the event loop.

A decoder refusal leaves as the matching :class:`service.errors.ApiError`, so callers above see one error
family.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.spawn
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np

from models.imaging import DecodedImage, DecodeLimits, ImageError
from models.imaging.assessability import ImageStatistics
from models.imaging.budget import ImageHeader
from models.imaging.decode import inspect_upload
from service.errors import (
    ApiError,
    ClientDisconnected,
    InternalError,
    Overloaded,
    RequestTimeout,
    api_error_for_image_code,
    from_image_error,
)
from service.ingest import decode_worker
from service.ingest.decode_worker import GridSpec, WorkerJob, read_exactly, write_all
from service.ingest.upload import Upload

log = logging.getLogger("normgate.ingest")

# The large lane: one process (a second large decode would double the peak the budget allows for), at the
# lowest priority, with a short queue (a burst of large images is refused 503 rather than held in memory).
LARGE_LANE_WORKERS = 1
LARGE_LANE_MAX_WAITING = 4
LARGE_LANE_NICE = 19
# Address space a worker may add to what it maps at start: twice its lane's ceiling plus room for codec
# libraries loaded on first use. The estimate is the budget; this is the backstop when it is wrong.
_ADDRESS_SPACE_SLACK = 256 * 1024 * 1024


class DecodeBacklogFull(Overloaded):
    """More uploads are waiting to be decoded than the lane may hold: 503 overloaded, like a full queue."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


def decode_thread_count(setting: int) -> int:
    """NORMGATE_DECODE_WORKERS, with 0 meaning one fewer than the usable CPUs (1–8).

    The model thread needs a core of its own: on 2 cores one decode thread beat two at 4 concurrent
    clients (end-to-end per batch 1.25× vs 1.29× the model's own pass, docs/benchmarks.md); with a GPU the
    model thread still needs a core to launch kernels. Beyond 8 decoders decoding outruns any one model.
    """
    if setting > 0:
        return setting
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, usable - 1))


def lower_thread_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux schedules threads on their own; elsewhere the
    call would renice the whole process, so it does nothing there).

    Decoding is throughput work that must not slow the model: on a busy CPU the scheduler then gives the
    model thread its core first and the decode threads the rest. Raising niceness needs no privilege.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:  # a sandbox without setpriority: run at normal priority rather than not at all
        log.warning("could not lower the decode thread's priority: %s", exc)


_CONTEXT_LOCK = threading.Lock()
_CONTEXT: BaseContext | None = None
WORKER_NAME_PREFIX = "normgate-decode-"


def _without_main_module(get_preparation_data: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    """multiprocessing re-imports the parent's ``__main__`` in every child it starts by spawn or fork server
    (``python -m tests.service.fault_server``, a benchmark script: torch, the app, seconds and ~550 MB per
    decode process). A decode worker needs nothing from it: for processes named ``normgate-decode-…`` the
    preparation data leaves the main module out; every other process is prepared as before."""

    def prepare(name: str) -> dict[str, Any]:
        data = get_preparation_data(name)
        if name.startswith(WORKER_NAME_PREFIX):
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
        return data

    prepare.__wrapped__ = get_preparation_data  # type: ignore[attr-defined]
    return prepare


def worker_context() -> BaseContext:
    """The multiprocessing context decode workers start from: a fork server (started once per server process,
    fresh: never a fork of the threaded server itself) that has imported the worker module."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            if not hasattr(multiprocessing.spawn.get_preparation_data, "__wrapped__"):
                multiprocessing.spawn.get_preparation_data = _without_main_module(  # type: ignore[assignment]
                    multiprocessing.spawn.get_preparation_data
                )
            if "forkserver" in multiprocessing.get_all_start_methods():
                forkserver = multiprocessing.get_context("forkserver")
                forkserver.set_forkserver_preload(decode_worker.PRELOAD)
                _CONTEXT = forkserver
            else:  # pragma: no cover - macOS/Windows development machines
                _CONTEXT = multiprocessing.get_context("spawn")
        return _CONTEXT


@dataclass(frozen=True)
class DecodeJob:
    body: bytes
    limits: DecodeLimits
    work: WorkerJob


@dataclass
class DecodeResult:
    decoded: DecodedImage | None  # what the header said; pixels only when asked for (else 0 × 0); None: display
    grid: np.ndarray[Any, np.dtype[np.float32]] | None = None  # the model's input [3, h, w], when asked for
    display_png: bytes | None = None
    width: int = 0
    height: int = 0
    lane: str = ""  # which lane decoded it
    seconds: float = 0.0  # in the lane's thread: sending the body to having the answer
    # The full-resolution image's assessability statistics (models.imaging.assessability); None: no pixels
    # or a multi-frame image, whose frames have theirs in ``frame_statistics`` (in frame order).
    statistics: ImageStatistics | None = None
    frame_statistics: list[ImageStatistics] | None = None
    frames: int = 1  # display jobs: frames stacked top to bottom in ``display_png`` (each width × height)


_NO_PIXELS: np.ndarray[Any, np.dtype[np.float32]] = np.zeros((0, 0), dtype=np.float32)


class _Refused(Exception):
    """The worker's decoder refused the image (its code, detail and, for the budget, its estimate)."""

    def __init__(self, code: str, detail: str, estimated_bytes: int | None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.estimated_bytes = code, detail, estimated_bytes


class _Abandoned(Exception):
    """The job's process was killed by the pool (deadline or disconnect); nobody waits for this answer."""


class _Worker:
    """One decode process and the server's end of its pipe. One lane thread runs a job on it at a time;
    ``abandon`` may be called from the event loop at any moment of that job."""

    def __init__(self, lane: str, index: int, nice: int, memory_headroom_bytes: int, recycle: bool) -> None:
        self.name = f"{WORKER_NAME_PREFIX}{lane}-{index}"
        self.lane = lane
        self.nice = nice
        self.memory_headroom_bytes = memory_headroom_bytes
        self.recycle = recycle  # a fresh process after every job: nothing of a large decode stays behind
        self.process: Any = None  # multiprocessing.Process of the worker context
        self.conn: Connection | None = None
        self.restarts = 0
        self._lock = threading.Lock()
        self._job: threading.Event | None = None  # the abandonment flag of the job the process is running

    def start(self) -> None:
        context = worker_context()
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(  # type: ignore[attr-defined]  # BaseContext's Process is per start method
            target=decode_worker.serve,
            args=(child_end, self.nice, self.memory_headroom_bytes),
            name=self.name,
            daemon=True,
        )
        process.start()
        child_end.close()  # the child's end lives in the child only, so its death reads as end-of-file here
        self.process, self.conn = process, parent_end

    def stop(self) -> None:
        """Close the pipe (the worker exits on end-of-file) and reap the process."""
        conn, process = self.conn, self.process
        self.conn = self.process = None
        if conn is not None:
            conn.close()
        if process is not None:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)

    def _kill_process(self) -> None:
        process = self.process
        if process is not None and process.pid is not None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def abandon(self, job: threading.Event) -> None:
        """Nobody waits for ``job`` any more: it never starts, or its process is killed now (SIGKILL, so its
        memory is returned at once)."""
        with self._lock:
            job.set()
            if self._job is job:
                self._kill_process()

    def kill(self) -> None:
        """Shutting down: kill whatever runs."""
        with self._lock:
            if self._job is not None:
                self._job.set()
            self._kill_process()

    def run(self, job: DecodeJob, abandoned: threading.Event) -> DecodeResult:
        """One job, blocking (in a lane thread): send it and wait for the answer."""
        started = time.perf_counter()
        with self._lock:
            if abandoned.is_set():  # the deadline or the client went before the job reached the process
                raise _Abandoned
            if self.conn is None or self.process is None or not self.process.is_alive():
                if self.process is not None:
                    self.stop()
                self.start()
            self._job = abandoned
        conn = self.conn
        assert conn is not None
        try:
            conn.send((job.work, dataclasses.astuple(job.limits), len(job.body)))
            write_all(conn.fileno(), memoryview(job.body))
            reply = conn.recv()
            pixels = _NO_PIXELS
            if reply[0] == "decoded" and reply[3] is not None:
                pixels = np.empty(reply[3], dtype=np.float32)
                read_exactly(conn.fileno(), pixels.data.cast("B"))
        except (EOFError, OSError) as exc:
            with self._lock:
                self._job = None
            died = self._reap()
            if abandoned.is_set():
                raise _Abandoned from None
            raise self._died(died) from exc
        with self._lock:
            self._job = None
        if self.recycle:
            self.stop()
        seconds = time.perf_counter() - started
        kind = reply[0]
        if kind == "refused":
            raise _Refused(reply[1], reply[2], reply[3])
        if kind == "failed":
            raise InternalError(f"the decoder failed: {reply[1]}")
        if kind == "display":
            return DecodeResult(None, None, reply[1], reply[2], reply[3], self.lane, seconds, frames=reply[4])
        _, fields, grid, _, statistics = reply
        decoded = DecodedImage(pixels=pixels, **fields)
        if isinstance(statistics, list):
            return DecodeResult(
                decoded, grid, None, decoded.width, decoded.height, self.lane, seconds, None, statistics
            )
        return DecodeResult(decoded, grid, None, decoded.width, decoded.height, self.lane, seconds, statistics)

    def _reap(self) -> int | None:
        """After the pipe broke: reap the dead process, start a fresh one; the old one's exit code."""
        process = self.process
        code = None
        if process is not None:
            process.join(timeout=5.0)
            code = process.exitcode
        self.conn = self.process = None
        self.restarts += 1
        try:
            self.start()
        except Exception:  # the next job tries again
            log.exception("could not start decode worker %s", self.name)
        return code

    @staticmethod
    def _died(exit_code: int | None) -> ApiError:
        """A worker that died under an image: killed by the kernel or aborted (out of memory, usually) → 413;
        anything else (a codec crashing on hostile bytes) → 400. Either way the image is refused, never retried."""
        if exit_code in (-signal.SIGKILL, -signal.SIGABRT):
            return api_error_for_image_code(
                "too_large", "decoding this image took more memory than a decode may have; the decoder was stopped"
            )
        return api_error_for_image_code(
            "bad_image", f"the decoder stopped on this image (exit status {exit_code}); it cannot be decoded"
        )


class DecodeLane:
    """Worker processes for one size class, a thread per worker on the server's side, and a bounded queue."""

    def __init__(
        self,
        name: str,
        workers: int,
        max_waiting: int,
        nice: int,
        ceiling_bytes: int,
        thread_nice: int,
        recycle: bool = False,
        on_abandon: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.ceiling_bytes = ceiling_bytes
        headroom = 2 * ceiling_bytes + _ADDRESS_SPACE_SLACK
        self.workers = [_Worker(name, i, nice, headroom, recycle) for i in range(workers)]
        self.executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"normgate-decode-{name}",
            initializer=lower_thread_priority,
            initargs=(thread_nice,),
        )
        self.capacity = workers + max_waiting
        self.in_flight = 0  # decoding or waiting; only touched on the event loop thread
        self._idle: asyncio.Queue[_Worker] | None = None
        self._on_abandon = on_abandon

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.capacity

    @property
    def started(self) -> bool:
        """Every worker process has been started once (the first start includes the fork server's)."""
        return all(worker.restarts or worker.process is not None for worker in self.workers)

    def start(self) -> None:
        """Start every worker process, each from the lane thread that will use it (not waited for: /readyz
        answers 503 until they are up)."""
        for worker in self.workers:
            self.executor.submit(worker.start)

    def _idle_queue(self) -> asyncio.Queue[_Worker]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for worker in self.workers:
                self._idle.put_nowait(worker)
        return self._idle

    async def run(self, job: DecodeJob, deadline: float, disconnected: asyncio.Future[None] | None) -> DecodeResult:
        if self.saturated:
            raise DecodeBacklogFull(
                f"{self.in_flight} uploads are already being decoded or waiting to be; try again shortly"
            )
        self.in_flight += 1
        worker: _Worker | None = None
        future: asyncio.Future[DecodeResult] | None = None
        try:
            worker = await self._acquire(deadline, disconnected)
            started = time.monotonic()
            abandoned = threading.Event()
            future = asyncio.get_running_loop().run_in_executor(self.executor, worker.run, job, abandoned)
            stop = await _first_of(future, disconnected, deadline)
            if stop is None:
                return future.result()
            worker.abandon(abandoned)
            if self._on_abandon is not None:
                self._on_abandon(self.name, stop)
            if stop == "deadline":
                raise RequestTimeout(
                    f"the image was still being decoded {time.monotonic() - started:.1f} s later when the "
                    "request's deadline passed; the decode was stopped"
                )
            raise ClientDisconnected(
                "the client disconnected while its image was being decoded; the decode was stopped"
            )
        finally:
            self.in_flight -= 1
            if worker is not None:
                self._release_when_done(worker, future)

    async def _acquire(self, deadline: float, disconnected: asyncio.Future[None] | None) -> _Worker:
        idle = self._idle_queue()
        if not idle.empty():
            return idle.get_nowait()
        getter = asyncio.ensure_future(idle.get())
        stop = await _first_of(getter, disconnected, deadline)
        if stop is None:
            return getter.result()
        getter.cancel()
        if getter.done() and not getter.cancelled():  # got a worker in the same instant: give it back
            idle.put_nowait(getter.result())
        if stop == "deadline":
            raise RequestTimeout("the request's deadline passed while the image waited to be decoded")
        raise ClientDisconnected("the client disconnected while its image waited to be decoded")

    def _release_when_done(self, worker: _Worker, future: asyncio.Future[Any] | None) -> None:
        idle = self._idle_queue()
        if future is None or future.done():
            idle.put_nowait(worker)
            return

        # Abandoned: the thread is still returning (its process killed and a fresh one forked); the worker is
        # free once it has. Its answer (_Abandoned) is read here, so asyncio does not report it as lost.
        def free(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                done.exception()
            idle.put_nowait(worker)

        future.add_done_callback(free)

    def shutdown(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        for worker in self.workers:
            worker.stop()


async def _first_of(
    future: asyncio.Future[Any], disconnected: asyncio.Future[None] | None, deadline: float
) -> str | None:
    """Wait for ``future``; None when it finished, "disconnect" or "deadline" when that came first."""
    waiting: set[asyncio.Future[Any]] = {future}
    if disconnected is not None:
        waiting.add(disconnected)
    done, _ = await asyncio.wait(
        waiting, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
    )
    if future in done:
        return None
    if disconnected is not None and disconnected in done:
        return "disconnect"
    return "deadline"


def _process_niceness(added: int) -> int:
    """The niceness a decode process runs at: the server's own plus ``added`` (at most 19). Passed as a target,
    not an increment, so it does not depend on the fork server's own niceness."""
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + max(0, added))


class DecodePool:
    """The server's decoding: header check on the event loop, then the ordinary or the large lane."""

    def __init__(
        self,
        workers: int,
        max_waiting: int,
        limits: DecodeLimits,
        large_threshold_bytes: int,
        nice: int = 0,
        on_abandon: Callable[[str, str], None] | None = None,
    ) -> None:
        self.limits = limits
        self.large_threshold_bytes = min(large_threshold_bytes, limits.max_decode_bytes)
        self.ordinary = DecodeLane(
            "ordinary",
            workers,
            max_waiting,
            _process_niceness(nice),
            self.large_threshold_bytes,
            thread_nice=nice,
            on_abandon=on_abandon,
        )
        self.large = DecodeLane(
            "large",
            LARGE_LANE_WORKERS,
            LARGE_LANE_MAX_WAITING,
            _process_niceness(LARGE_LANE_NICE),
            limits.max_decode_bytes,
            thread_nice=LARGE_LANE_NICE,
            recycle=True,
            on_abandon=on_abandon,
        )
        self.lanes = (self.ordinary, self.large)

    @property
    def saturated(self) -> bool:
        """The ordinary lane's queue is full: new ordinary uploads are being refused (/readyz says 503)."""
        return self.ordinary.saturated

    @property
    def started(self) -> bool:
        """Every decode process is up (/readyz says 503 before)."""
        return all(lane.started for lane in self.lanes)

    def start(self) -> None:
        context = worker_context()
        if context.get_start_method() == "forkserver":
            # From this thread, now: the fork server inherits the niceness of the thread that starts it, and
            # the lane threads that would otherwise start it first run at the decode niceness.
            multiprocessing.forkserver.ensure_running()
        for lane in self.lanes:
            lane.start()

    def shutdown(self) -> None:
        for lane in self.lanes:
            lane.shutdown()

    def inspect(self, upload: Upload) -> ImageHeader | None:
        """The upload's header as far as it can be read cheaply (size, frames, DICOM routing attributes), after
        the checks that need no decode: 413 over the limits, 415 for an unknown type. None: only the decoder
        can read it."""
        try:
            return inspect_upload(upload.body, upload.content_type, self.limits)
        except ImageError as exc:
            raise from_image_error(exc) from None

    async def decode(
        self,
        upload: Upload,
        deadline: float,
        disconnected: asyncio.Future[None] | None = None,
        *,
        grid: GridSpec | None = None,
        keep_pixels: bool = False,
        display: bool = False,
        header: ImageHeader | None = None,
    ) -> DecodeResult:
        """Decode ``upload`` in a worker process: the model input for ``grid``, the pixels if ``keep_pixels``,
        or the display PNG. 413 from the header alone when it is over the limits, 504 at the deadline, 499 when
        the client left. ``header``: what ``inspect`` already answered for this upload (not read again)."""
        if header is None:
            header = self.inspect(upload)
        work = WorkerJob(upload.content_type, display=display, grid=grid, keep_pixels=keep_pixels)
        large = header is not None and header.estimated_peak_bytes > self.large_threshold_bytes
        lane = self.large if large else self.ordinary
        limits = self.limits if large else dataclasses.replace(self.limits, max_decode_bytes=lane.ceiling_bytes)
        try:
            return await lane.run(DecodeJob(upload.body, limits, work), deadline, disconnected)
        except _Refused as refused:
            estimate = refused.estimated_bytes
            if lane is self.large or estimate is None or estimate <= lane.ceiling_bytes:
                raise api_error_for_image_code(refused.code, refused.detail) from None
            if estimate > self.limits.max_decode_bytes:
                raise _budget_error(refused, self.limits) from None
        # The ordinary lane's worker parsed a header the server could not read cheaply and found the image
        # larger than that lane takes: the large lane decodes it, with the full budget.
        try:
            return await self.large.run(DecodeJob(upload.body, self.limits, work), deadline, disconnected)
        except _Refused as refused:
            raise api_error_for_image_code(refused.code, refused.detail) from None


def _budget_error(refused: _Refused, limits: DecodeLimits) -> ApiError:
    """The ordinary lane's refusal restated against the pool's budget: its detail (``check_decode_budget``'s
    sentence, "…; the limit is N MiB") named the lane's ceiling."""
    stated = refused.detail.rsplit("; the limit is", 1)[0]
    return api_error_for_image_code("too_large", f"{stated}; the limit is {limits.max_decode_bytes / 2**20:.0f} MiB")
