"""Every checkpoint folder under ``NORMGATE_MODELS_DIR``, one :class:`ModelWorker` each, and the supervisor that
restarts a worker thread that died.

Start-up reads and validates every ``model.json`` before any worker starts: a checkpoint whose metadata is
invalid refuses the whole server with one line naming the file and the field, instead of a model that is
never ready or a 500 later.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import get_args

import torch

from models.checkpoint import META_FILE, CheckpointError, read_metadata
from models.device import resolve_device as models_resolve_device
from models.imaging.assessability import UnassessableReason
from models.metadata import ModelMetadata
from service.config import Settings
from service.observability.metrics import ServiceMetrics
from service.schemas import Decision
from service.serving.routing import InstanceAttributes, route
from service.serving.worker import BatchHook, ModelWorker

log = logging.getLogger("normgate.registry")


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when one is usable, else the CPU (models.device)."""
    try:
        return models_resolve_device(name)
    except ValueError as exc:
        raise ValueError(f"NORMGATE_DEVICE={name!r} but no CUDA device is available") from exc


class ConfigurationError(RuntimeError):
    """The models folder, a checkpoint's metadata or the default model is wrong: the server must not start."""


def discover_checkpoints(root: Path, default_name: str) -> list[tuple[str, Path, ModelMetadata]]:
    """Every checkpoint folder under ``root`` with its validated metadata, sorted by name.

    Raises :class:`ConfigurationError` with one line naming the folder, file or field at fault, so a bad
    ``model.json`` stops the server at start-up instead of failing requests later.
    """
    if not root.is_dir():
        raise ConfigurationError(f"NORMGATE_MODELS_DIR={root} is not a folder")
    folders = sorted(p for p in root.iterdir() if (p / META_FILE).is_file())
    if not folders:
        raise ConfigurationError(f"no checkpoint folders (with {META_FILE}) under NORMGATE_MODELS_DIR={root}")
    found = []
    for folder in folders:
        try:
            found.append((folder.name, folder, read_metadata(folder)))
        except CheckpointError as exc:
            raise ConfigurationError(f"invalid checkpoint: {exc}") from None
    names = [name for name, _, _ in found]
    if default_name not in names:
        raise ConfigurationError(
            f"NORMGATE_DEFAULT_MODEL={default_name!r} is not one of the checkpoints under {root}: {', '.join(names)}"
        )
    return found


class ModelRegistry:
    """Every checkpoint folder under the models directory, by folder name."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, batch_hook: BatchHook | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.batch_hook = batch_hook
        self.workers: dict[str, ModelWorker] = {}
        self.default_name = settings.default_model
        self._stop_supervising = threading.Event()

    def discover(self) -> list[tuple[str, Path, ModelMetadata]]:
        return discover_checkpoints(Path(self.settings.models_dir), self.default_name)

    def start(self) -> None:
        """Find the checkpoints and start one worker per model; loading and warm-up go on in the background.

        A misconfiguration (no folder, no checkpoints, unknown default model, no such device) raises here so
        the server refuses to start with a sentence instead of staying unready forever.
        """
        device = resolve_device(self.settings.device)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)  # process-wide, shared by every worker
        for name, folder, meta in self.discover():
            worker = ModelWorker(name, folder, device, self.settings, self.metrics, self.batch_hook, meta=meta)
            self.workers[name] = worker
            self._initialise_decision_counters(name)
            worker.start()
        # Made here, not in __init__: an app's lifespan may run more than once (tests), a thread only once.
        self._stop_supervising = threading.Event()
        threading.Thread(
            target=self._supervise, args=(self._stop_supervising,), name="normgate-supervisor", daemon=True
        ).start()

    def _initialise_decision_counters(self, name: str) -> None:
        """Every decision and reason of this model exists from the start at 0, so rate() sees the first one."""
        for decision in get_args(Decision):
            reasons = get_args(UnassessableReason) if decision == "unassessable" else ("none",)
            for reason in reasons:
                self.metrics.decisions.labels(name, decision, reason)

    # Seconds between the supervisor's looks at the workers (a death is noticed within this).
    SUPERVISE_INTERVAL_S = 0.05

    def _supervise(self, stop: threading.Event) -> None:
        """Restart worker threads that died, NORMGATE_WORKER_RESTART_DELAY_S after their death.

        Until then the model is not ready (/readyz 503, new requests 503 not_ready) and what is queued waits;
        the delay keeps a worker that dies on every batch from spinning.
        """
        while not stop.wait(self.SUPERVISE_INTERVAL_S):
            for worker in self.workers.values():
                if not worker.dead:
                    continue
                if worker.died_at is None:  # died without passing the guard (it always sets this)
                    worker.died_at = time.monotonic()
                if time.monotonic() - worker.died_at >= self.settings.worker_restart_delay_s:
                    try:
                        worker.restart()
                    except Exception:
                        log.exception("model %s: restarting the worker failed", worker.name)

    def stop(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        self._stop_supervising.set()
        for worker in self.workers.values():
            worker.close()
        for worker in self.workers.values():
            worker.stop(max(0.0, deadline - time.monotonic()))

    @property
    def ready(self) -> bool:
        return bool(self.workers) and all(w.ready for w in self.workers.values())

    def states(self) -> dict[str, str]:
        return {name: w.describe_state() for name, w in self.workers.items()}

    def get(self, name: str) -> ModelWorker | None:
        return self.workers.get(name)

    def route(self, attributes: InstanceAttributes) -> ModelWorker | None:
        """The worker of the model that serves a DICOM instance by its header (routing.py), or None."""
        name = route({n: w.meta for n, w in self.workers.items()}, attributes)
        return self.workers[name] if name is not None else None
