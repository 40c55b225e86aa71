"""Models behind the API: one worker thread per model, fed by a dynamic batching queue.

Each checkpoint folder under ``NORMGATE_MODELS_DIR`` gets a ``ModelWorker``: a thread that loads the checkpoint
onto the device, warms it up by pushing real requests through its own queue, then serves batches until the
queue is closed. Only that thread ever touches the model, so no lock is needed around it and the device sees
one stream of work.

A batch may mix saliency methods and ``heatmap=none`` requests. It is split into groups: requests without a
heatmap get a forward pass under ``torch.inference_mode`` (no graph, no backward); each saliency method group
gets one forward and one backward pass that yield logits and maps together. Every image therefore goes
through the network exactly once, and its answer does not depend on what else was in the batch (eval mode:
no batch statistics), which the tests check.

The explanation target is always the positive class (e.g. ``foreign_object``): the radiographer wants to see
where the suspected object is, also when the decision is ``accept``.

A checkpoint with out-of-distribution statistics (``ood`` block of model.json, :mod:`models.ood`) gets an
``ood_score`` per image from the same forward pass: a forward hook on the pooled features records them while
the batch runs (``models.ood.FeatureRecorder``, removed when the group is done), and the Mahalanobis distance is
computed from them. A checkpoint without the statistics runs without the check and says so once when it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models import saliency
from models.checkpoint import WEIGHTS_FILE, load_checkpoint
from models.imaging.grid import grid_point_to_original, preprocess_batch
from models.metadata import ModelMetadata
from models.ood import FeatureRecorder, MahalanobisStatistics
from models.pointing_game import argmax_point
from models.saliency import DEFAULT_METHOD
from service.config import Settings
from service.errors import Overloaded
from service.observability.metrics import ServiceMetrics
from service.serving.batching import (
    BatchQueue,
    DeadlineExceeded,
    PendingRequest,
    run_batch,
)

log = logging.getLogger("normgate.inference")

BatchHook = Callable[[str, Sequence[PendingRequest[Any, Any]]], None]

# What running out of memory looks like: CUDA's allocator raises torch.OutOfMemoryError (an alias of
# torch.cuda.OutOfMemoryError), the CPU allocator a RuntimeError subclass of the same or MemoryError.
OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


class ClientGone(Exception):
    """The client disconnected while its request was queued; its slot was freed."""


class WorkerDied(RuntimeError):
    """The worker thread ended while this request's batch was in flight (answered 500 internal)."""


class ImageTooLargeForMemory(Overloaded):
    """One image alone ran out of memory: nothing smaller to split into, so 503 (it may fit when idle)."""


def release_memory(device: torch.device) -> None:
    """Give back what a failed attempt left: unreachable tensors, and the CUDA allocator's cached blocks."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class ModelInput:
    """One preprocessed request as the worker needs it."""

    image: torch.Tensor  # [3, h, w] normalised, on the CPU
    original_hw: tuple[int, int]
    method: str | None  # None: heatmap=none, forward pass only


@dataclass(frozen=True)
class ModelOutput:
    probability: float
    point: tuple[int, int] | None  # (x, y) in original pixels
    heatmap_png: bytes | None
    heatmap_hw: tuple[int, int]
    queue_seconds: float
    compute_seconds: float
    batch_size: int
    ood_score: float | None = None  # Mahalanobis distance of the pooled features; None without statistics


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def heatmap_to_png(saliency_map: np.ndarray) -> bytes:
    """[h, w] float map → single-channel 8-bit PNG, min–max scaled (a constant map becomes all zeros)."""
    low, high = float(saliency_map.min()), float(saliency_map.max())
    span = high - low
    if not math.isfinite(span) or span <= 0:
        scaled = np.zeros(saliency_map.shape, dtype=np.uint8)
    else:
        scaled = np.rint((saliency_map - low) * (255.0 / span)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # zlib level 1: ~3x faster than Pillow's default 6 on a 320 × 320 map (it runs on the model's worker
    # thread, once per image) for ~10 % more bytes; the pixels are the same.
    Image.fromarray(scaled, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ModelRunner:
    """Runs batches of ``ModelInput`` through one checkpoint on one device."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        meta: ModelMetadata,
        device: torch.device,
        metrics: ServiceMetrics,
        ood: MahalanobisStatistics | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.meta = meta
        self.device = device
        self.metrics = metrics
        self.ood = ood
        self.positive_index = meta.positive_index
        self.grid_hw = (int(meta.input_size[0]), int(meta.input_size[1]))

    def _explain(self, images: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.full((images.shape[0],), self.positive_index, dtype=torch.long, device=images.device)
        # The checkpoint's NormGrad layers (model.json) only apply to NormGrad methods; others use their own.
        layers = self.meta.normgrad_layers if saliency.get_method(method).uses_normgrad_layers else None
        # One pass: the engine returns the logits of the forward its explanation ran on these very images
        # (NormGrad, Grad-CAM: one forward + one cut backward), so no second forward is needed
        # (docs/benchmarks.md, "Profile and hot spots").
        return saliency.explain_with_logits(self.model, images, method, target=target, layers=layers)

    def run(self, batch: Sequence[PendingRequest[ModelInput, ModelOutput]]) -> list[ModelOutput]:
        started = time.perf_counter()
        groups: dict[str | None, list[int]] = {}
        for index, pending in enumerate(batch):
            groups.setdefault(pending.payload.method, []).append(index)

        probabilities: list[float] = [0.0] * len(batch)
        maps: list[np.ndarray | None] = [None] * len(batch)
        ood_scores: list[float | None] = [None] * len(batch)
        for method, indices in groups.items():
            images = torch.stack([batch[i].payload.image for i in indices]).to(self.device)
            recorder = FeatureRecorder(self.model, images, self.meta.ood.layer) if self.meta.ood else None
            with recorder or contextlib.nullcontext():
                if method is None:
                    with torch.inference_mode():
                        logits = self.model(images)
                    group_maps = None
                else:
                    map_tensor, logits = self._explain(images, method)
                    group_maps = map_tensor.detach().float().cpu().numpy()
            # Temperature scaling (models.calibrate); the explanation is of the raw logit, which it does not change.
            scaled = logits.detach().float() / self.meta.temperature
            group_probs = torch.softmax(scaled, dim=1)[:, self.positive_index].cpu().tolist()
            group_scores = self._ood_scores(recorder, images)
            for position, i in enumerate(indices):
                probabilities[i] = float(group_probs[position])
                if group_maps is not None:
                    maps[i] = group_maps[position]
                if group_scores is not None:
                    ood_scores[i] = float(group_scores[position])
        compute_seconds = time.perf_counter() - started
        self.metrics.compute_duration.labels(self.name, "forward_backward").observe(compute_seconds)
        self.metrics.batch_size.labels(self.name).observe(len(batch))

        outputs = []
        for pending, probability, saliency_map, ood_score in zip(batch, probabilities, maps, ood_scores):
            self.metrics.queue_wait.labels(self.name).observe(pending.queue_seconds)
            point, png = None, None
            if saliency_map is not None:
                t0 = time.perf_counter()
                grid_x, grid_y = argmax_point(saliency_map)
                point = grid_point_to_original(grid_x, grid_y, self.grid_hw, pending.payload.original_hw)
                t1 = time.perf_counter()
                png = heatmap_to_png(saliency_map)
                t2 = time.perf_counter()
                self.metrics.compute_duration.labels(self.name, "saliency").observe(t1 - t0)
                self.metrics.compute_duration.labels(self.name, "encode").observe(t2 - t1)
            outputs.append(
                ModelOutput(
                    probability=probability,
                    point=point,
                    heatmap_png=png,
                    heatmap_hw=self.grid_hw,
                    queue_seconds=pending.queue_seconds,
                    compute_seconds=compute_seconds,
                    batch_size=len(batch),
                    ood_score=ood_score,
                )
            )
        return outputs

    def _ood_scores(self, recorder: FeatureRecorder | None, images: torch.Tensor) -> list[float] | None:
        """The Mahalanobis distance of each image's pooled features from the pass just run, or None."""
        if recorder is None or self.ood is None:
            return None
        features = recorder.features
        if features is None:  # a saliency method that never ran the images themselves: one plain pass
            assert self.meta.ood is not None  # a recorder is only made for a model with the statistics
            with torch.inference_mode(), FeatureRecorder(self.model, images, self.meta.ood.layer) as again:
                self.model(images)
            features = again.features
            if features is None:
                raise RuntimeError(f"layer {self.meta.ood.layer!r} did not run in the model's forward pass")
        return [float(v) for v in self.ood.score(features.cpu().double().numpy())]


class ModelState:
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class ModelWorker:
    """One checkpoint, its batching queue and the thread that owns the model."""

    def __init__(
        self,
        name: str,
        folder: Path,
        device: torch.device,
        settings: Settings,
        metrics: ServiceMetrics,
        batch_hook: BatchHook | None = None,
        meta: ModelMetadata | None = None,
    ) -> None:
        self.name = name
        self.folder = folder
        self.device = device
        self.metrics = metrics
        self.settings = settings
        self._queue: BatchQueue[ModelInput, ModelOutput] = BatchQueue(
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000.0,
            max_size=settings.max_queue_size,
            on_depth_change=metrics.queue_depth.labels(name).set,
        )
        self.state = ModelState.LOADING
        self.error: str | None = None
        # The validated model.json from discovery; replaced by the loaded checkpoint's own (the same file).
        self.meta: ModelMetadata | None = meta
        self.runner: ModelRunner | None = None
        # Smoothed seconds per batch, for the Retry-After estimate of a full queue.
        self.seconds_per_batch = 1.0
        self._batch_hook = batch_hook
        self._thread = threading.Thread(target=self._run, name=f"normgate-model-{name}", daemon=True)
        self.stopping = False  # set before the queue closes: a thread ending now is not a death
        self.restarts = 0
        # SHA-256 of model.safetensors as loaded: audit records name the exact weights behind a decision.
        self.weights_sha256: str | None = None
        self.died_at: float | None = None  # time.monotonic() of the last death, until restarted
        self._in_flight: Sequence[PendingRequest[ModelInput, ModelOutput]] | None = None

    # -- lifecycle (called from the event loop thread) --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop accepting, let the worker finish what is queued, wait for it up to ``timeout_s``."""
        self.stopping = True
        self._queue.close()
        self._thread.join(timeout_s)
        if self.state != ModelState.FAILED:
            self.state = ModelState.STOPPED

    @property
    def ready(self) -> bool:
        return self.state == ModelState.READY and self._thread.is_alive()

    @property
    def dead(self) -> bool:
        """Loaded and serving once, but its thread has ended without being asked to stop."""
        return self.state == ModelState.READY and not self.stopping and not self._thread.is_alive()

    def restart(self) -> None:
        """Start a new serving thread on the already loaded model; what is queued is served by it.

        Called by the registry's supervisor only (one caller, so no two threads ever share the model).
        """
        self._fail_in_flight(WorkerDied("the model worker stopped while this request was being computed"))
        self.restarts += 1
        self.metrics.worker_restarts.labels(self.name).inc()
        self._thread = threading.Thread(
            target=self._serve_guarded, name=f"normgate-model-{self.name}-{self.restarts}", daemon=True
        )
        self.died_at = None
        self._thread.start()
        log.warning("model %s: worker thread restarted (restart %d)", self.name, self.restarts)

    def describe_state(self) -> str:
        if self.state == ModelState.READY and not self._thread.is_alive():
            return "worker thread died"
        if self.state == ModelState.FAILED:
            return f"failed: {self.error}"
        return self.state

    # -- the queue, as callers see it ------------------------------------------------------------------------
    def submit(self, model_input: ModelInput, deadline: float) -> PendingRequest[ModelInput, ModelOutput]:
        """Queue one request for this model; raises ``QueueFull`` or ``QueueClosed`` instead of waiting."""
        return self._queue.put(model_input, deadline)

    def submit_many(
        self, model_inputs: Sequence[ModelInput], deadline: float
    ) -> list[PendingRequest[ModelInput, ModelOutput]]:
        """Queue the frames of a cine together (all or none; each counts against the queue bound and in
        ``normgate_queue_depth``); they are batched like any other requests, in order."""
        return self._queue.put_many(model_inputs, deadline)

    async def results(
        self,
        pendings: Sequence[PendingRequest[ModelInput, ModelOutput]],
        disconnected: asyncio.Future[None] | None = None,
    ) -> list[ModelOutput]:
        """Every answer of ``submit_many``'s requests, in order, under the same rules as ``result``: at the
        deadline or a disconnect the frames still queued are withdrawn (never computed) and ``DeadlineExceeded``
        or ``ClientGone`` raised; frames already being computed are awaited. A frame that fails fails the cine
        (its exception is raised; the frames not yet started are withdrawn)."""
        waiters = [asyncio.wrap_future(pending.future) for pending in pendings]
        for waiter in waiters:
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        deadline = min((pending.deadline for pending in pendings), default=math.inf)
        remaining: set[asyncio.Future[Any]] = set(waiters)
        watched = disconnected
        try:
            while remaining:
                waitables = remaining | ({watched} if watched is not None else set())
                timeout = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait(waitables, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finished = done & remaining
                remaining -= finished
                failed = next((w for w in finished if not w.cancelled() and w.exception() is not None), None)
                if failed is not None:
                    self._withdraw_unstarted(pendings)
                    error = failed.exception()
                    assert error is not None
                    raise error
                gone = watched is not None and watched in done
                if gone or (not finished and time.monotonic() >= deadline):
                    if self._withdraw_unstarted(pendings):
                        raise ClientGone() if gone else DeadlineExceeded("deadline passed while queued")
                    # Every frame left is being computed: its answer is awaited, as for one request.
                    watched, deadline = None, math.inf
            return [waiter.result() for waiter in waiters]
        except asyncio.CancelledError:
            self._withdraw_unstarted(pendings)
            raise

    def _withdraw_unstarted(self, pendings: Sequence[PendingRequest[ModelInput, ModelOutput]]) -> bool:
        """Withdraw every request of ``pendings`` no worker has started; True when any was."""
        withdrawn = False
        for pending in pendings:
            if not pending.future.done() and self._queue.withdraw(pending):
                withdrawn = True
        return withdrawn

    async def result(
        self, pending: PendingRequest[ModelInput, ModelOutput], disconnected: asyncio.Future[None] | None = None
    ) -> ModelOutput:
        """Wait for a submitted request's answer, its deadline, or its client leaving — whichever comes first.

        Deadline or disconnect while still queued: the request is withdrawn (never computed, slot freed) and
        ``DeadlineExceeded`` or ``ClientGone`` raised. Already being computed: the answer is awaited, so a
        request the worker started is always answered exactly once.
        """
        waiter = asyncio.wrap_future(pending.future)
        # Mark a late exception as retrieved so asyncio does not log it when nobody is left to read it.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            waitables: set[asyncio.Future[Any]] = {waiter}
            if disconnected is not None:
                waitables.add(disconnected)
            timeout = max(0.0, pending.deadline - time.monotonic())
            done, _ = await asyncio.wait(waitables, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                return waiter.result()
            if disconnected is not None and disconnected in done and self._queue.withdraw(pending):
                raise ClientGone()
            if self._queue.withdraw(pending):
                raise DeadlineExceeded("deadline passed while queued")
            return await waiter
        except asyncio.CancelledError:
            self._queue.withdraw(pending)
            raise

    @property
    def queue_depth(self) -> int:
        """Requests waiting in this model's queue (not yet taken into a batch)."""
        return len(self._queue)

    @property
    def accepting(self) -> bool:
        """False once the queue is closed (shutting down, or the model failed to load)."""
        return not self._queue.closed

    def configure_batching(self, max_batch_size: int, max_wait_s: float) -> None:
        """Change the batch size and wait between batches (the batching study's cells; settings otherwise)."""
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_s >= 0")
        self._queue.max_batch_size = max_batch_size
        self._queue.max_wait_s = max_wait_s

    def close(self) -> None:
        """Stop accepting; what is queued is still served (``stop`` also waits for the thread)."""
        self.stopping = True
        self._queue.close()

    def retry_after_seconds(self) -> int:
        batches_ahead = math.ceil(len(self._queue) / self.settings.max_batch_size)
        return max(1, math.ceil(batches_ahead * self.seconds_per_batch))

    # -- the worker thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            checkpoint = load_checkpoint(self.folder, device=self.device)
        except Exception as exc:
            log.exception("model %s: loading %s failed", self.name, self.folder)
            self.error = str(exc)
            self.state = ModelState.FAILED
            self._queue.close()
            self._fail_queued(exc)
            return
        self.meta = checkpoint.meta
        self.weights_sha256 = _sha256_of(self.folder / WEIGHTS_FILE)
        self.runner = ModelRunner(
            self.name, checkpoint.model, checkpoint.meta, self.device, self.metrics, ood=checkpoint.ood
        )
        if checkpoint.ood is None:
            log.info(
                "model %s: model.json has no ood block, so the out-of-distribution check is off for it "
                "(python -m models.ood fit adds one)",
                self.name,
            )
        self.metrics.model_info.labels(self.name, self.meta.version, self.meta.arch).set(1)
        self.state = ModelState.WARMING_UP
        self._warm_up()
        if self.state == ModelState.FAILED:
            self._queue.close()
            self._fail_queued(RuntimeError(self.error))
            return
        self._serve_guarded()

    def _serve_guarded(self) -> None:
        """Serve batches until the queue is closed and empty. Whatever escapes (``run_batch`` only catches
        ``Exception``; a bug in the queue, a ``BaseException`` from a library) ends this thread, but first its
        batch in flight is answered, and the registry's supervisor starts a new thread."""
        try:
            while (batch := self._queue.next_batch()) is not None:
                self._in_flight = batch
                run_batch(batch, self._handle_batch, self._before_batch)
                self._in_flight = None
        except BaseException as exc:
            log.critical(
                "model %s: worker thread died (%s); the supervisor restarts it",
                self.name,
                type(exc).__name__,
                exc_info=True,
            )
            self.died_at = time.monotonic()
            self._fail_in_flight(WorkerDied(f"the model worker died ({type(exc).__name__})"))

    def _fail_in_flight(self, exc: Exception) -> None:
        batch, self._in_flight = self._in_flight, None
        for pending in batch or ():
            if not pending.future.done():
                pending.future.set_exception(exc)

    def _before_batch(self, batch: Sequence[PendingRequest[ModelInput, ModelOutput]]) -> None:
        if self._batch_hook is not None:
            self._batch_hook(self.name, batch)

    def _handle_batch(self, batch: Sequence[PendingRequest[ModelInput, ModelOutput]]) -> list[ModelOutput | Exception]:
        started = time.perf_counter()
        outputs = self._run_splitting_on_oom(batch)
        self.seconds_per_batch = 0.8 * self.seconds_per_batch + 0.2 * (time.perf_counter() - started)
        return outputs

    def _run_splitting_on_oom(
        self, batch: Sequence[PendingRequest[ModelInput, ModelOutput]]
    ) -> list[ModelOutput | Exception]:
        """Run a batch; when it runs out of memory, free what the attempt held and run each half on its own.

        Every image's answer is independent of its batch (eval mode), so the halves give the same answers.
        A single image that still does not fit is answered 503 ``overloaded`` (memory may be free later),
        the others of its batch are still computed.
        """
        assert self.runner is not None
        try:
            return list(self.runner.run(batch))
        except OUT_OF_MEMORY:
            pass  # leave the except block first: its traceback pins the tensors of the failed attempt
        self.metrics.out_of_memory.labels(self.name).inc()
        release_memory(self.device)
        if len(batch) == 1:
            log.warning("model %s: out of memory on a single image; answered 503", self.name)
            return [
                ImageTooLargeForMemory(
                    "the model ran out of memory on this image; try again shortly",
                    headers={"Retry-After": str(self.retry_after_seconds())},
                )
            ]
        half = len(batch) // 2
        log.warning(
            "model %s: out of memory on a batch of %d; retrying as %d + %d",
            self.name,
            len(batch),
            half,
            len(batch) - half,
        )
        return self._run_splitting_on_oom(batch[:half]) + self._run_splitting_on_oom(batch[half:])

    def _warm_up(self) -> None:
        """Run one heatmap request and one forward-only request through the batch path, one batch each.

        The first batches pay for lazy initialisation (allocator, kernels, hooks); readiness waits for them so
        the first patient request does not. They bypass the queue (whose size may be 1) but not the batch
        handler or its hook.
        """
        assert self.meta is not None
        h, w = self.meta.input_size
        gray = np.full((h, w), 0.5, dtype=np.float32)
        image = preprocess_batch([gray], self.meta.input_size, self.meta.mean, self.meta.std)[0]
        for method in (DEFAULT_METHOD, None):
            pending: PendingRequest[ModelInput, ModelOutput] = PendingRequest(
                payload=ModelInput(image=image, original_hw=(h, w), method=method), deadline=math.inf
            )
            pending.future.set_running_or_notify_cancel()
            pending.started_at = pending.enqueued_at
            run_batch([pending], self._handle_batch, self._before_batch)
            error = pending.future.exception()
            if error is not None:
                self.error = f"warm-up failed: {error}"
                self.state = ModelState.FAILED
                return
        self.state = ModelState.READY
        log.info("model %s ready on %s", self.name, self.device)

    def _fail_queued(self, exc: Exception) -> None:
        while (batch := self._queue.next_batch()) is not None:
            for pending in batch:
                pending.future.set_exception(exc)
