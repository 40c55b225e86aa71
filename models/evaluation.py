"""The offline Pointing Game engine (docs/algorithms.md, "Pointing Game"): models × saliency methods over a data
set, one pass.

The experiments reproduced are those of Özer & Öksüz (MIDL 2021, Table 2) and Özer et al. (2023, Tables 2–5):
Pointing Game of NormGrad and baseline saliency methods on Object-CXR, with and without Gaussian smoothing of
the map (σ = 1.0, the seed code's 11 × 11 kernel with reflection padding), for trained models and for the
randomisation sanity checks — *semi-random* (backbone kept, classifier head re-initialised with He init) and
*full-random* (every layer re-initialised, He init for convolutions as torchvision does) — repeated over
checkpoints/seeds (mean ± std) and across two architectures (Difference of Means).

Initialisations (``--init``, docs/evaluation.md): ``trained``; ``random-head`` (the trained backbone with a
He-re-initialised head — formerly called ``semi-random``, which stays as a deprecated alias);
``pretrained-backbone`` (a backbone pretrained by NormGate's own self-supervised pretext task,
:mod:`models.pretext`, with a He-initialised head: the analogue of the papers' ImageNet backbone with a random
head, the papers' "semi-random"); ``full-random`` (every layer re-initialised).

Tolerance: τ in model-grid pixels, given directly (``tau``) or as a fraction of the grid's shorter side
(``tau_rel``; default the checkpoint's ``model.json`` ``tau_rel``: 0.025 for the chest task, the papers' 15 px
at 600 px). Every result records both the fraction and the pixels used.

Per batch of images: each image is decoded once and preprocessed once per distinct model input grid; for each
model one no-grad forward gives the classification probabilities of every image; saliency is computed for the
positive images only (the Pointing Game ignores images without a box, and for FROC a negative image's point is
a false positive wherever it lies), with the target class = the positive class (the ground-truth class of those
images). Maps come at the model input grid; the argmax point is scored against the boxes scaled to that grid.

The *controls* (:mod:`models.controls`: ``control-tophat``, ``control-brightest``, ``control-centre`` and
``random``) are evaluation-only methods, not saliency methods: model-free maps computed from the unit-range image
on the model grid (``random``: seeded uniform noise per (model, image)), giving what image processing alone, and
chance, score on the same images in the same run.

This module is a plain ML library: it never imports ``service`` or FastAPI.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import build_model, default_normgrad_layers, reset_classifier_head
from models.checkpoint import Checkpoint, load_checkpoint
from models.controls import ControlInputs, control_maps, list_controls
from models.datasets import Sample, load_gray
from models.imaging.grid import grid_point_to_original, original_box_to_grid, preprocess_batch, resize_unit
from models.metadata import ModelMetadata
from models.pointing_game import argmax_point, energy_pointing_game, pointing_game_hit
from models.saliency.gradients import PATH_BASELINES  # "zero" (normalised 0 = mid-grey) | "black" (darkest pixel)
from models.saliency.postprocess import POSTPROCESS_MODES  # "none" | "seed" (the papers' seed code)

INIT_MODES = ("trained", "random-head", "pretrained-backbone", "full-random")
RANDOMISED_INITS = INIT_MODES[1:]
# Old init names that still work, with a warning, mapped to their current name.
DEPRECATED_INIT_ALIASES = {"semi-random": "random-head"}
COMBINE_MODES = ("geometric-mean", "minmax-product")
RANDOM_CONTROL = "random"
CONTROL_METHODS = tuple(list_controls())


class EvaluationError(ValueError):
    """A bad evaluation request (unknown method, init mode, empty model list …)."""


def available_methods() -> list[str]:
    """Saliency method ids of the explanation engine, then the control methods."""
    from models.saliency import list_methods

    return list(list_methods()) + list(CONTROL_METHODS)


def check_methods(methods: Sequence[str]) -> list[str]:
    methods = [m.strip() for m in methods if m and m.strip()]
    if not methods:
        raise EvaluationError("give at least one method")
    known = available_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise EvaluationError(f"unknown method(s) {unknown}; choose from {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise EvaluationError(f"method listed twice: {methods}")
    return methods


# --- models under test ---------------------------------------------------------------------------------------


@dataclass
class EvaluatedModel:
    """One model as evaluated: ``key`` names it in the results (checkpoint folder name, ``#k`` for repeats)."""

    key: str
    model: nn.Module
    meta: ModelMetadata
    init: str = "trained"
    seed: int = 0
    source: str = ""


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def canonical_init(init: str) -> str:
    """The current name of an init mode; a deprecated alias warns (FutureWarning) and maps to its new name."""
    if init in DEPRECATED_INIT_ALIASES:
        current = DEPRECATED_INIT_ALIASES[init]
        warnings.warn(
            f"init mode {init!r} is deprecated; use {current!r} (the trained backbone with a re-initialised head)",
            FutureWarning,
            stacklevel=2,
        )
        return current
    if init not in INIT_MODES:
        raise EvaluationError(f"unknown init mode {init!r}; choose one of {', '.join(INIT_MODES)}")
    return init


def initialise_model(
    checkpoint: Checkpoint, init: str, seed: int, pretext: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """The checkpoint's model as trained, or a seeded randomised copy (see the module docstring).

    ``pretext``: the backbone weights of :func:`models.pretext.load_pretext_backbone`, needed (only) for
    ``pretrained-backbone``. The randomised copies never touch the checkpoint's own module, and the global RNG
    is left as it was.
    """
    init = canonical_init(init)
    if init == "trained":
        return checkpoint.model
    device = next(checkpoint.model.parameters()).device
    head_generator = torch.Generator(device="cpu").manual_seed(seed)
    if init == "random-head":
        model = copy.deepcopy(checkpoint.model).to("cpu")  # the seeded CPU generator fills the head on CPU
        reset_classifier_head(model, generator=head_generator)
        return _freeze(model.to(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(checkpoint.meta.arch, num_classes=len(checkpoint.meta.classes))
    if init == "pretrained-backbone":
        if pretext is None:
            raise EvaluationError("init 'pretrained-backbone' needs a pretext backbone (python -m models.pretext)")
        from models.pretext import apply_pretext_backbone

        apply_pretext_backbone(model, pretext)
        reset_classifier_head(model, generator=head_generator)
    return _freeze(model.to(device=device, dtype=torch.float32))


def load_models(
    paths: Sequence[str | Path],
    init: str = "trained",
    seed: int = 0,
    repeat: int = 1,
    device: str | torch.device = "cpu",
    pretext: str | Path | Sequence[str | Path] | None = None,
) -> list[EvaluatedModel]:
    """Load checkpoint folders; ``repeat`` > 1 evaluates each randomised model with ``repeat`` seeds.

    ``pretext``: the pretext-task folder(s) (:mod:`models.pretext`) whose backbone ``pretrained-backbone`` uses;
    one per architecture, each checkpoint takes the one of its own architecture.
    """
    if not paths:
        raise EvaluationError("give at least one model checkpoint")
    init = canonical_init(init)
    if repeat < 1 or (repeat > 1 and init == "trained"):
        raise EvaluationError(
            "repeat must be 1 for trained models (repeat by passing several checkpoints), and >= 1 for randomised ones"
        )
    backbones: dict[str, dict[str, torch.Tensor]] = {}
    if init == "pretrained-backbone":
        folders = [pretext] if isinstance(pretext, (str, Path)) else list(pretext or [])
        if not folders:
            raise EvaluationError("init 'pretrained-backbone' needs the pretext folder (--pretext DIR)")
        from models.pretext import load_pretext_backbone

        for folder in folders:
            arch, state = load_pretext_backbone(folder)
            if arch in backbones:
                raise EvaluationError(f"two pretext folders for {arch}; give one per architecture")
            backbones[arch] = state
    names = [Path(p).name or str(p) for p in paths]
    out: list[EvaluatedModel] = []
    for index, path in enumerate(paths):
        checkpoint = load_checkpoint(path, device=device)
        backbone = backbones.get(checkpoint.meta.arch)
        if init == "pretrained-backbone" and backbone is None:
            raise EvaluationError(
                f"{path}: a {checkpoint.meta.arch} checkpoint, but no pretext backbone of that architecture was given "
                f"(pretext folders are for {', '.join(sorted(backbones))})"
            )
        base = names[index] if names.count(names[index]) == 1 else f"{names[index]}-{index}"
        for k in range(repeat):
            model_seed = seed + 1000 * index + k
            key = base if repeat == 1 else f"{base}#{k}"
            out.append(
                EvaluatedModel(
                    key=key,
                    model=initialise_model(checkpoint, init, model_seed, backbone),
                    meta=checkpoint.meta,
                    init=init,
                    seed=model_seed,
                    source=str(path),
                )
            )
    return out


# --- smoothing ----------------------------------------------------------------------------------------------


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian; radius max(5, ⌈4σ⌉) — the seed code's 11-tap kernel at σ ≤ 1.25."""
    radius = max(5, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of [B, H, W] maps (separable, reflection padding as the papers' seed code)."""
    if sigma < 0 or not math.isfinite(sigma):
        raise EvaluationError(f"smoothing sigma must be >= 0, got {sigma!r}")
    if sigma == 0 or maps.numel() == 0:
        return maps
    kernel = gaussian_kernel_1d(sigma).to(maps.device)
    radius = kernel.numel() // 2
    x = maps[:, None].to(torch.float32)
    h, w = x.shape[-2:]
    # Reflection needs a pad smaller than the side; tiny maps fall back to edge replication.
    mode = "reflect" if radius < min(h, w) else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


# --- per-image results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageResult:
    """One row of per_image.csv (docs/formats.md, "per_image.csv"): the point, hit, energy PG and FROC match."""

    image: str
    model: str
    method: str
    label: int
    probability: float
    point_x: int | None  # model-grid pixels
    point_y: int | None
    hit: int | None  # 1 hit, 0 miss, None when the image has no box
    n_boxes: int
    energy_pg: float | None = None
    objects_hit: int = 0  # annotations whose shape contains the point (original pixels); FROC
    smooth_sigma: float = 0.0


@dataclass(frozen=True)
class EvaluationConfig:
    """What to compute. The tolerance: ``tau`` (grid pixels) or ``tau_rel`` (fraction of the grid's shorter
    side), not both; neither = each model's ``tau_rel`` from its model.json."""

    methods: tuple[str, ...]
    tau: float | None = None
    smooth_sigmas: tuple[float, ...] = (0.0,)
    combine: str = "geometric-mean"
    batch_size: int = 8
    seed: int = 0
    tau_rel: float | None = None
    postprocess: str = "none"
    path_baseline: str = "zero"

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_MODES:
            raise EvaluationError(f"unknown combine mode {self.combine!r}; choose one of {', '.join(COMBINE_MODES)}")
        if self.tau is not None and self.tau_rel is not None:
            raise EvaluationError("give the tolerance either in pixels (tau) or as a fraction (tau_rel), not both")
        if self.tau is not None and not (self.tau >= 0 and math.isfinite(self.tau)):
            raise EvaluationError(f"tau must be a non-negative number of pixels, got {self.tau!r}")
        if self.tau_rel is not None and not (0 < self.tau_rel <= 1 and math.isfinite(self.tau_rel)):
            raise EvaluationError(f"tau_rel must be a fraction of the grid side in (0, 1], got {self.tau_rel!r}")
        if self.postprocess not in POSTPROCESS_MODES:
            raise EvaluationError(f"unknown postprocess {self.postprocess!r}; choose one of {POSTPROCESS_MODES}")
        if self.path_baseline not in PATH_BASELINES:
            raise EvaluationError(f"unknown path baseline {self.path_baseline!r}; choose one of {PATH_BASELINES}")
        if self.batch_size < 1:
            raise EvaluationError("batch size must be >= 1")
        for s in self.smooth_sigmas:
            if not (s >= 0 and math.isfinite(s)):
                raise EvaluationError(f"smoothing sigma must be >= 0, got {s!r}")

    def tolerance_for(self, meta: ModelMetadata) -> tuple[float, float]:
        """``(tau_rel, tau_px)`` for a model: the fraction of its grid's shorter side and the pixels it makes."""
        side = float(min(meta.input_size))
        if self.tau is not None:
            return self.tau / side, float(self.tau)
        rel = self.tau_rel if self.tau_rel is not None else float(meta.tau_rel)
        return rel, rel * side

    def options_for(self, method_id: str) -> dict[str, Any]:
        """The non-default keyword options this configuration passes to a saliency method (none for controls)."""
        from models.saliency import get_method

        options = get_method(method_id).options
        chosen: dict[str, Any] = {}
        if self.postprocess != "none" and "postprocess" in options:
            chosen["postprocess"] = self.postprocess
        if self.path_baseline != "zero" and "baseline" in options:
            chosen["baseline"] = self.path_baseline
        return chosen


def image_key(sample: Sample, root: str | Path | None = None) -> str:
    """A stable name for an image: its path relative to the data root (posix), else its file name."""
    path = Path(sample.image_path)
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def _explain_many_function() -> Callable[..., dict[str, torch.Tensor]] | None:
    import models.saliency as saliency

    explain_many: Callable[..., dict[str, torch.Tensor]] | None = getattr(saliency, "explain_many", None)
    return explain_many


def saliency_maps(
    entry: EvaluatedModel,
    images: torch.Tensor,
    methods: Sequence[str],
    keys: Sequence[str],
    config: EvaluationConfig,
    unit_images: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Unsmoothed maps [B, h, w] per method for a normalised batch, target = the positive class.

    ``explain_many`` of the saliency engine shares one forward+backward among all NormGrad variants and
    builds Guided Grad-CAM from Grad-CAM and guided backprop; each map equals ``explain``'s (tested). Methods
    with non-default options (``postprocess``, ``baseline``) run one ``explain`` each. Controls get
    ``unit_images`` (the unit-range grayscale images on the grid, [B, h, w]); without it they get the first
    channel of ``images`` with the model's normalisation undone.
    """
    from models.saliency import explain, get_method

    target = entry.meta.positive_index
    layers = list(entry.meta.normgrad_layers) or default_normgrad_layers(entry.meta.arch)
    wanted = [m for m in methods if m not in CONTROL_METHODS]
    with_options = {m: config.options_for(m) for m in wanted}
    shared = [m for m in wanted if not with_options[m]]
    maps: dict[str, torch.Tensor] = {}
    explain_many = _explain_many_function()
    if shared and explain_many is not None:
        maps.update(explain_many(entry.model, images, shared, target=target, layers=layers, combine=config.combine))
    for method_id in wanted:
        if method_id in maps:
            continue
        spec = get_method(method_id)
        options = dict(with_options[method_id])
        if "combine" in spec.options:
            options["combine"] = config.combine
        method_layers = layers if method_id.startswith("normgrad-") else None
        maps[method_id] = explain(entry.model, images, method_id, target=target, layers=method_layers, **options)
    controls = [m for m in methods if m in CONTROL_METHODS]
    if controls:
        if unit_images is None:
            mean, std = float(entry.meta.mean[0]), float(entry.meta.std[0])
            unit_images = images[:, 0].detach().float().cpu() * std + mean
        inputs = ControlInputs(unit_images.detach().to("cpu", torch.float32), list(keys), entry.key, config.seed)
        for control_id in controls:
            maps[control_id] = control_maps(control_id, inputs)
    return {m: maps[m].detach().to("cpu", torch.float32) for m in methods}


@dataclass
class DecodedBatch:
    samples: list[Sample]
    keys: list[str]
    grays: list[np.ndarray]
    _tensors: dict[tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]], torch.Tensor] = field(
        default_factory=dict
    )

    def tensor_for(
        self, meta: ModelMetadata, indices: Sequence[int] | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """The batch preprocessed for a model's grid (computed once per distinct grid/mean/std)."""
        cache_key = (tuple(meta.input_size), tuple(meta.mean), tuple(meta.std))
        if cache_key not in self._tensors:
            self._tensors[cache_key] = preprocess_batch(self.grays, meta.input_size, meta.mean, meta.std)
        x = self._tensors[cache_key]
        if indices is not None:
            x = x[list(indices)]
        return x.to(device)

    def unit_for(self, meta: ModelMetadata, indices: Sequence[int] | None = None) -> torch.Tensor:
        """The batch's unit-range grayscale images on a model's grid, [B, h, w] (what the controls look at)."""
        cache_key = (tuple(meta.input_size), (), ())
        if cache_key not in self._tensors:
            self._tensors[cache_key] = torch.stack([resize_unit(g, meta.input_size) for g in self.grays])
        x = self._tensors[cache_key]
        return x if indices is None else x[list(indices)]


def decode_batch(samples: Sequence[Sample], root: str | Path | None = None) -> DecodedBatch:
    return DecodedBatch(
        samples=list(samples),
        keys=[image_key(s, root) for s in samples],
        grays=[load_gray(s.image_path) for s in samples],
    )


def positive_probabilities(entry: EvaluatedModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = entry.model(x)
    return torch.softmax(logits.float(), dim=-1)[:, entry.meta.positive_index].cpu()


def _has_boxes(sample: Sample) -> bool:
    return sample.label == 1 and len(sample.annotations) > 0


# (model key, method, σ) -> (indices of the batch's images with boxes, their smoothed maps [P, h, w]).
KeptMaps = dict[tuple[str, str, float], tuple[list[int], torch.Tensor]]


def evaluate_decoded(
    batch: DecodedBatch,
    models: Sequence[EvaluatedModel],
    config: EvaluationConfig,
    device: str | torch.device = "cpu",
    keep_maps: bool = False,
) -> tuple[list[ImageResult], KeptMaps]:
    """Rows for every (image, model, method, σ) of one decoded batch; optionally the smoothed maps too."""
    rows: list[ImageResult] = []
    kept: KeptMaps = {}
    positives = [i for i, s in enumerate(batch.samples) if _has_boxes(s)]
    for entry in models:
        meta = entry.meta
        grid_hw = (int(meta.input_size[0]), int(meta.input_size[1]))
        x = batch.tensor_for(meta, device=device)
        _, tau_px = config.tolerance_for(meta)
        probabilities = positive_probabilities(entry, x)
        raw_maps = (
            saliency_maps(
                entry,
                x[positives],
                config.methods,
                [batch.keys[i] for i in positives],
                config,
                unit_images=batch.unit_for(meta, positives),
            )
            if positives
            else {}
        )
        for sigma in config.smooth_sigmas:
            for method_id in config.methods:
                maps = smooth_maps(raw_maps[method_id], sigma) if positives else None
                if keep_maps and maps is not None:
                    kept[(entry.key, method_id, sigma)] = (positives, maps)
                position = {image_index: j for j, image_index in enumerate(positives)}
                for i, sample in enumerate(batch.samples):
                    probability = float(probabilities[i])
                    if i not in position:
                        rows.append(
                            ImageResult(
                                batch.keys[i],
                                entry.key,
                                method_id,
                                int(sample.label),
                                probability,
                                None,
                                None,
                                None,
                                len(sample.annotations),
                                None,
                                0,
                                sigma,
                            )
                        )
                        continue
                    assert maps is not None  # i is a positive, so positives is not empty
                    saliency = maps[position[i]]
                    px, py = argmax_point(saliency)
                    original_hw = batch.grays[i].shape[:2]
                    grid_boxes = [original_box_to_grid(b, original_hw, grid_hw) for b in sample.boxes]
                    hit = pointing_game_hit((px, py), grid_boxes, tau_px)
                    energy = energy_pointing_game(saliency, grid_boxes)
                    ox, oy = grid_point_to_original(px, py, grid_hw, original_hw)
                    objects_hit = sum(1 for a in sample.annotations if a.contains(ox, oy))
                    rows.append(
                        ImageResult(
                            batch.keys[i],
                            entry.key,
                            method_id,
                            int(sample.label),
                            probability,
                            int(px),
                            int(py),
                            None if hit is None else int(hit),
                            len(sample.annotations),
                            energy,
                            objects_hit,
                            sigma,
                        )
                    )
    return rows, kept


_Item = TypeVar("_Item")


def iter_batches(items: Sequence[_Item], batch_size: int) -> Iterator[list[_Item]]:
    for start in range(0, len(items), batch_size):
        yield list(items[start : start + batch_size])


def evaluate(
    samples: Sequence[Sample],
    models: Sequence[EvaluatedModel],
    config: EvaluationConfig,
    root: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[list[str], list[ImageResult]]]:
    """Yield ``(image keys, rows)`` batch by batch, so that callers can persist and report progress."""
    check_methods(config.methods)
    if not models:
        raise EvaluationError("give at least one model")
    for chunk in iter_batches(list(samples), config.batch_size):
        batch = decode_batch(chunk, root)
        rows, _ = evaluate_decoded(batch, models, config, device=device)
        yield batch.keys, rows


def shard_samples(samples: Sequence[Sample], index: int, count: int) -> list[Sample]:
    """Shard ``index`` of ``count``: every count-th image of the data set in its file order."""
    if count < 1 or not 0 <= index < count:
        raise EvaluationError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    return list(samples[index::count])


# --- aggregation: per-image rows → results.json (docs/formats.md, "results.json") -------------------------------


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


# A per-image row as evaluation yields it, or as read back from a JSON/CSV export.
SummaryRow = ImageResult | Mapping[str, Any]


def _get(row: SummaryRow, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)


def summarise_rows(
    rows: Iterable[SummaryRow],
    model_archs: dict[str, str],
    model_thresholds: dict[str, float],
    fp_rates: Sequence[float] | None = None,
    method_order: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Aggregate per-image rows into results.json's blocks: Pointing Game, energy PG, FROC, classification,
    mean ± std over several models of one architecture (sample std, ddof = 1) and the Difference of Means
    (|mean_A − mean_B|, Özer et al. 2023 §4.5) when exactly two architectures were evaluated.

    Rows are sorted first, so the same rows give bit-identical results whatever order they arrive in.
    """
    from models.classification import classification_accuracy, roc_auc
    from models.pointing_game import OBJECT_CXR_FP_RATES, PointingGameResult, froc_from_counts

    rates = tuple(fp_rates or OBJECT_CXR_FP_RATES)
    ordered = sorted(rows, key=lambda r: (_get(r, "model"), _get(r, "method"), _get(r, "image")))
    by_pair: dict[tuple[str, str], list[SummaryRow]] = {}
    for r in ordered:
        by_pair.setdefault((_get(r, "method"), _get(r, "model")), []).append(r)
    order = {m: i for i, m in enumerate(method_order or ())}
    # The requested order (as the user listed them), controls last; unknown extras alphabetically after.
    methods = sorted({m for m, _ in by_pair}, key=lambda m: (m in CONTROL_METHODS, order.get(m, len(order)), m))
    models = sorted({k for _, k in by_pair})

    results: dict[str, Any] = {"methods": {}, "classification": {}, "repeated": {}, "dom": {}}
    for method_id in methods:
        per_model = {}
        for model_key in models:
            group = by_pair.get((method_id, model_key))
            if not group:
                continue
            pg = PointingGameResult.from_outcomes(
                None if _get(r, "hit") is None else bool(_get(r, "hit")) for r in group
            )
            energies = [float(_get(r, "energy_pg")) for r in group if _get(r, "energy_pg") is not None]
            n_objects = sum(int(_get(r, "n_boxes")) for r in group)
            froc_result = froc_from_counts(
                [(float(_get(r, "probability")), int(_get(r, "objects_hit"))) for r in group],
                n_images=len(group),
                n_objects=n_objects,
                fp_rates=rates,
            )
            per_model[model_key] = {
                "pointing_game": _round(pg.accuracy),
                "hits": pg.hits,
                "n": pg.n,
                "energy_pg": _round(float(np.mean(energies)) if energies else None),
                "froc": _round(froc_result.froc),
                "froc_sensitivities": {f"{rate:g}": _round(s) for rate, s in zip(rates, froc_result.sensitivities)},
            }
        results["methods"][method_id] = per_model

    # Classification: one row per image and model is enough (every method carries the same probability).
    for model_key in models:
        first_method = next(m for m in methods if (m, model_key) in by_pair)
        group = by_pair[(first_method, model_key)]
        labels = [int(_get(r, "label")) for r in group]
        probabilities = [float(_get(r, "probability")) for r in group]
        results["classification"][model_key] = {
            "accuracy": _round(classification_accuracy(labels, probabilities, model_thresholds.get(model_key, 0.5))),
            "auc": _round(roc_auc(labels, probabilities)),
            "n": len(group),
            "n_positive": int(sum(labels)),
        }

    archs: dict[str, list[str]] = {}
    for model_key in models:
        archs.setdefault(model_archs.get(model_key, "unknown"), []).append(model_key)
    arch_means: dict[str, dict[str, float]] = {}
    for method_id in methods:
        for arch, members in archs.items():
            values = [
                results["methods"][method_id][m]["pointing_game"]
                for m in members
                if m in results["methods"][method_id] and results["methods"][method_id][m]["pointing_game"] is not None
            ]
            if not values:
                continue
            mean = float(np.mean(values))
            arch_means.setdefault(method_id, {})[arch] = mean
            if len(values) >= 2:
                std = float(np.std(values, ddof=1))
                results["repeated"].setdefault(method_id, {})[arch] = {
                    "mean": _round(mean),
                    "std": _round(std),
                    "models": members,
                }
                for m in members:
                    if m in results["methods"][method_id]:
                        results["methods"][method_id][m]["mean"] = _round(mean)
                        results["methods"][method_id][m]["std"] = _round(std)
    if len(archs) == 2:
        a, b = sorted(archs)
        results["dom_architectures"] = [a, b]
        for method_id, means in arch_means.items():
            if a in means and b in means:
                results["dom"][method_id] = _round(abs(means[a] - means[b]))
    return results
