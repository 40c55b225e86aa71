"""The bounded thread pool that decodes and resizes uploads off the event loop.

A decoder refusal (:class:`models.imaging.ImageError`) leaves :meth:`DecodePool.run` as the matching
:class:`service.errors.ApiError`, so callers above see one error family.

Decoding is :mod:`models.imaging` (the same code training and evaluation use); this module only decides where
and how much of it runs at once, so the model thread keeps its core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from models.imaging import ImageError
from service.errors import Overloaded, from_image_error

log = logging.getLogger("normgate.ingest")

T = TypeVar("T")


class DecodeBacklogFull(Overloaded):
    """More uploads are waiting to be decoded than the pool may hold: 503 overloaded, like a full queue."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


def decode_thread_count(setting: int) -> int:
    """NORMGATE_DECODE_WORKERS, with 0 meaning one fewer than the usable CPUs (1–8).

    The model thread needs a core of its own: on 2 cores one decode thread beat two at 4 concurrent
    clients (end-to-end per batch 1.25× vs 1.29× the model's own pass, docs/benchmarks.md); with a GPU the
    model thread still needs a core to launch kernels. Beyond 8 threads decoding outruns any one model.
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


class DecodePool:
    """A bounded pool of threads for decoding and resizing uploads, off the event loop.

    The executor's own queue is unbounded, so admission is counted here: at most ``workers + max_waiting``
    uploads are decoding or waiting to; one more is refused at once (the caller answers 503) instead of
    holding another body in memory behind a backlog.
    """

    def __init__(self, workers: int, max_waiting: int, nice: int = 0) -> None:
        self.executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="normgate-decode",
            initializer=lower_thread_priority,
            initargs=(nice,),
        )
        self.capacity = workers + max_waiting
        self.in_flight = 0  # only touched on the event loop thread

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.in_flight >= self.capacity:
            raise DecodeBacklogFull(
                f"{self.in_flight} uploads are already being decoded or waiting to be; try again shortly"
            )
        self.in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        except ImageError as exc:  # the decoder's refusal, as the API error that answers it (400/413/415/422)
            raise from_image_error(exc) from None
        finally:
            self.in_flight -= 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
