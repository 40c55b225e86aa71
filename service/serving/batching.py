"""A bounded, thread-safe dynamic batching queue and the loop that drains it.

Modelled on Ray Serve's ``_BatchQueue`` (python/ray/serve/batching.py): a batch leaves when it is full or when
a timeout has passed, every request carries its own future, and an exception raised while handling a batch is
set on every future of that batch. Unlike Ray's, this queue is consumed by a plain thread (the one that owns a
model on its device), so it uses a ``threading.Condition`` and ``concurrent.futures.Future``; it is bounded
(``QueueFull`` → the caller answers 503 at once); the wait is measured from the *oldest* queued request, not
from the previous batch; and requests carry deadlines. A ``concurrent.futures.Future`` gives the
cancel-or-start race for free: ``cancel()`` (client gone, deadline passed on the caller side) and
``set_running_or_notify_cancel()`` (the worker takes it) are atomic against each other, so a request is either
withdrawn or computed and answered, never both and never twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("normgate.batching")

P = TypeVar("P")
R = TypeVar("R")


class QueueFull(Exception):
    """The queue already holds ``max_size`` requests."""


class QueueClosed(Exception):
    """The queue no longer accepts requests (the service is shutting down)."""


class DeadlineExceeded(Exception):
    """A request's deadline passed before a worker took it; it was never computed."""


@dataclass(eq=False)
class PendingRequest(Generic[P, R]):
    payload: P
    deadline: float  # time.monotonic() after which the request must not be started
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when the worker took it into a batch
    future: Future[R] = field(default_factory=Future)

    @property
    def queue_seconds(self) -> float:
        return (self.started_at or time.monotonic()) - self.enqueued_at


class BatchQueue(Generic[P, R]):
    """Requests in arrival order; ``next_batch`` hands the worker up to ``max_batch_size`` of them."""

    def __init__(
        self,
        max_batch_size: int,
        max_wait_s: float,
        max_size: int,
        on_depth_change: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_size must be >= 1 and max_wait_s >= 0")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_size = max_size
        self._items: deque[PendingRequest[P, R]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_depth_change = on_depth_change

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _depth_changed(self) -> None:
        if self._on_depth_change is not None:
            self._on_depth_change(len(self._items))

    def put(self, payload: P, deadline: float) -> PendingRequest[P, R]:
        """Enqueue one request; raises ``QueueFull`` or ``QueueClosed`` instead of waiting."""
        with self._cond:
            if self._closed:
                raise QueueClosed("the queue is closed")
            if len(self._items) >= self.max_size:
                raise QueueFull(f"{len(self._items)} requests already queued")
            pending: PendingRequest[P, R] = PendingRequest(payload=payload, deadline=deadline)
            self._items.append(pending)
            self._depth_changed()
            self._cond.notify_all()
            return pending

    def put_many(self, payloads: Sequence[P], deadline: float) -> list[PendingRequest[P, R]]:
        """Enqueue several requests at once, one after another (the frames of a cine: each is one model input
        and takes one place in the queue), or none of them: ``QueueFull`` when they do not all fit."""
        with self._cond:
            if self._closed:
                raise QueueClosed("the queue is closed")
            if len(self._items) + len(payloads) > self.max_size:
                raise QueueFull(
                    f"{len(self._items)} requests already queued; {len(payloads)} more do not fit in {self.max_size}"
                )
            pendings: list[PendingRequest[P, R]] = [
                PendingRequest(payload=payload, deadline=deadline) for payload in payloads
            ]
            self._items.extend(pendings)
            self._depth_changed()
            self._cond.notify_all()
            return pendings

    def withdraw(self, pending: PendingRequest[P, R]) -> bool:
        """Take a request back if no worker has started it (client gone, deadline passed).

        True: it is cancelled and its slot is free. False: it is being (or was) computed; its future will
        be answered.
        """
        if not pending.future.cancel():
            return False
        with self._cond:
            try:
                self._items.remove(pending)
            except ValueError:
                pass  # the worker already popped and skipped it
            else:
                self._depth_changed()
            self._cond.notify_all()
        return True

    def close(self) -> None:
        """Stop accepting; the worker still drains what is queued, then ``next_batch`` returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next_batch(self) -> list[PendingRequest[P, R]] | None:
        """Block until a batch is due; return it with every future marked running, or None once closed."""
        with self._cond:
            while True:
                if not self._items:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                # A batch leaves when full, or when its oldest request has waited max_wait_s.
                leave_at = self._items[0].enqueued_at + self.max_wait_s
                remaining = leave_at - time.monotonic()
                if len(self._items) < self.max_batch_size and remaining > 0 and not self._closed:
                    self._cond.wait(remaining)
                    continue
                batch = self._take_batch()
                if batch:
                    return batch
                # Everything taken was cancelled or expired: wait for the next request.

    def _take_batch(self) -> list[PendingRequest[P, R]]:
        now = time.monotonic()
        batch: list[PendingRequest[P, R]] = []
        while self._items and len(batch) < self.max_batch_size:
            pending = self._items.popleft()
            if not pending.future.set_running_or_notify_cancel():
                continue  # cancelled by its caller: skip, never compute
            if now > pending.deadline:
                pending.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            pending.started_at = now
            batch.append(pending)
        self._depth_changed()
        return batch


def run_batch(
    batch: Sequence[PendingRequest[P, R]],
    handle_batch: Callable[[Sequence[PendingRequest[P, R]]], Sequence[R | BaseException]],
    before_batch: Callable[[Sequence[PendingRequest[P, R]]], None] | None = None,
) -> None:
    """Handle one batch and answer every future exactly once.

    ``handle_batch`` returns one result per request, in order; a result that is an exception is set on that
    request's future only. An exception raised by ``handle_batch`` (or by the ``before_batch`` hook) reaches
    every request of the batch, and the caller's loop goes on with the next batch.
    """
    try:
        if before_batch is not None:
            before_batch(batch)
        results = handle_batch(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} requests")
    except Exception as exc:
        log.exception("batch of %d failed", len(batch))
        for pending in batch:
            pending.future.set_exception(exc)
        return
    for pending, result in zip(batch, results):
        if isinstance(result, BaseException):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)


def serve_forever(
    queue: BatchQueue[P, R],
    handle_batch: Callable[[Sequence[PendingRequest[P, R]]], Sequence[R | BaseException]],
    before_batch: Callable[[Sequence[PendingRequest[P, R]]], None] | None = None,
) -> None:
    """The worker loop: drain batches until the queue is closed and empty."""
    while (batch := queue.next_batch()) is not None:
        run_batch(batch, handle_batch, before_batch)
