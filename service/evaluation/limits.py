"""The bounds of an evaluation job, defined once: ``python -m service.evaluate`` and ``POST /evaluate`` refuse the
same values (exit status 2 / ``422 bad_parameter``) before any model is loaded (docs/api.md, "/evaluate jobs").

Why each number: every model instance (checkpoints × ``repeat``) is held in memory for the whole job, so their
product is capped (``init: full-random, repeat: 1000000`` once allocated 21 GB before the kernel killed it); a
batch holds activations and gradients of every image (256 ResNet-18 inputs at 512² with saliency gradients is
a few GB); τ and σ are in model-grid pixels, and a grid side above 1024 is not served; the relative tolerance
τ_rel is a fraction of the grid's shorter side in (0, 1], the range models.evaluation and model.json take (a
zero tolerance is ``--tau 0``); pretext backbones are one folder per architecture, so never more than the
checkpoints; seeds feed numpy, which takes 0 … 2³² − 1; a data set of more images than the largest public chest
X-ray set is not an evaluation a server should take in one job; a path of more than 1024 characters is not a
path anybody meant (Linux refuses 4096 bytes anyway, and a 10k-character one used to give 500).
"""

from __future__ import annotations

import math

MAX_REPEAT = 16
MAX_MODELS = 8
MAX_MODEL_INSTANCES = 16  # checkpoints × repeat, all in memory at once
MAX_METHODS = 32
MAX_BATCH_SIZE = 256
MAX_TAU = 1024.0
MAX_TAU_REL = 1.0  # a fraction of the grid's shorter side, above 0
MAX_PRETEXTS = MAX_MODELS  # one pretext backbone folder per architecture of the checkpoints
MAX_SMOOTH_SIGMA = 64.0
MAX_SEED = 2**32 - 1
MAX_IMAGES = 200_000  # rows of the split's CSV, before sharding
MAX_SHARDS = 1024
MAX_PATH_CHARS = 1024  # data, model, pretext, and every image path of the CSV
MAX_NAME_CHARS = 255  # split, method, init, combine, postprocess and path baseline names (a file name's limit)
MAX_CSV_BYTES = 64 * 1024 * 1024  # the split's CSV is read while the request waits
# Jobs waiting to run that a server accepts (NORMGATE_EVALUATE_MAX_QUEUED); beyond it 503 with Retry-After.
DEFAULT_MAX_QUEUED_JOBS = 8


class BoundsError(ValueError):
    """A parameter outside its bound; the sentence names the field and the bound."""


def _number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BoundsError(f"{name} must be a number in {low:g}..{high:g}, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise BoundsError(f"{name} must be in {low:g}..{high:g}, got {value!r}")


def _fraction(name: str, value: object, high: float) -> None:
    """A number in (0, high]: above zero, at most ``high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BoundsError(f"{name} must be a fraction of the grid side in (0, {high:g}], got {value!r}")
    if not (math.isfinite(value) and 0 < value <= high):
        raise BoundsError(f"{name} must be a fraction of the grid side in (0, {high:g}], got {value!r}")


def _integer(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BoundsError(f"{name} must be an integer in {low}..{high}, got {value!r}")


def check_path_text(name: str, text: str) -> None:
    if len(text) > MAX_PATH_CHARS:
        raise BoundsError(f"{name} is {len(text)} characters long; the limit is {MAX_PATH_CHARS}")
    if "\x00" in text:
        raise BoundsError(f"{name} contains a NUL character")


def check_job_bounds(
    *,
    tau: float | None,
    smooth_sigma: float,
    batch_size: int,
    repeat: int,
    seed: int,
    models: int,
    methods: int,
    shards: int,
    tau_rel: float | None = None,
    pretexts: int = 0,
) -> None:
    """Raise :class:`BoundsError` for the first numeric parameter outside its bound (names are the CLI's).
    ``tau`` and ``tau_rel`` are optional (None: the model.json's ``tau_rel`` applies)."""
    if tau is not None:
        _number("--tau", tau, 0.0, MAX_TAU)
    if tau_rel is not None:
        _fraction("--tau-rel", tau_rel, MAX_TAU_REL)
    _number("--smooth-sigma", smooth_sigma, 0.0, MAX_SMOOTH_SIGMA)
    _integer("--batch-size", batch_size, 1, MAX_BATCH_SIZE)
    _integer("--repeat", repeat, 1, MAX_REPEAT)
    _integer("--seed", seed, 0, MAX_SEED)
    _integer("--shard n", shards, 1, MAX_SHARDS)
    _integer("number of --model checkpoints", models, 1, MAX_MODELS)
    _integer("number of --methods", methods, 1, MAX_METHODS)
    _integer("number of --pretext folders", pretexts, 0, MAX_PRETEXTS)
    if models * repeat > MAX_MODEL_INSTANCES:
        raise BoundsError(
            f"{models} checkpoint(s) × --repeat {repeat} = {models * repeat} models held in memory at once; "
            f"the limit is {MAX_MODEL_INSTANCES}"
        )


def check_image_count(count: int, where: str) -> None:
    if count > MAX_IMAGES:
        raise BoundsError(f"{where} lists {count} images; the limit of one job is {MAX_IMAGES} (use --shard)")
