"""Training CLI for NormGate's binary quality classifiers: ``python -m models.train``; it writes a checkpoint
folder (docs/formats.md, "Checkpoint folders").

The defaults train the chest foreign-object model. A second application names its own classes and positive
class (``--classes``, ``--positive-class``), the DICOM it serves (``--serves-*``, the ``serves`` block that routes
instances to it), its Pointing Game tolerance (``--tau-rel``) and how its result series are filed
(``--results-series-*``); the cardiac LVOT model is trained this way (docs/model-card.md, "Cardiac model").

The recipe is the papers' (Ozer et al. 2021 MIDL §3 "Experimental setup"; Ozer et al. 2023 §4.1 "Object-CXR"):
a torchvision ResNet/EfficientNet with a 2-class head (He initialisation), the grayscale radiograph duplicated to
three channels, cross-entropy, SGD with momentum 0.9, learning rate 0.005 divided by 10 every 5 epochs, batch
16, colour jittering + affine transformations + horizontal flips, and the best epoch kept by validation (dev)
accuracy. The papers fine-tune ImageNet weights at 600×600 for 20 epochs; ``--pretrained PATH`` takes a
user-supplied torchvision state_dict for that (nothing is downloaded), otherwise the network starts from
He-initialised weights.

Speed on a CPU: every image is decoded and resized once (through models.imaging.grid, the service's path) into an
in-memory float32 cache at the model grid; augmentation then runs batched on tensors. ``--amp bf16`` runs the
forward/backward under bfloat16 autocast (≈3× faster on CPUs with AMX, and on GPUs); weights stay float32.

Determinism and resuming: all randomness of epoch e (shuffle, augmentation, dropout) comes from seeds derived
from ``(--seed, e)``, so ``--resume`` after any epoch continues exactly as an uninterrupted run would. The state
is saved after each epoch as ``OUT/state/last.safetensors`` (model, optimizer momentum buffers) +
``OUT/state/last.json`` (epoch, scheduler, best-so-far, seeds, settings); no pickle anywhere.

Outputs in OUT: ``model.safetensors`` + ``model.json`` (the best epoch; metrics measured on the saved
checkpoint itself, so they describe exactly what ships), ``ood.safetensors`` (the out-of-distribution statistics
of those weights, :mod:`models.ood`, fitted on the train split with the threshold set on dev), ``train_log.jsonl``
(one line per epoch), ``state/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import SUPPORTED_ARCHS, build_model, default_normgrad_layers, reset_classifier_head
from models.checkpoint import load_checkpoint, save_checkpoint
from models.classification import classification_metrics
from models.convert import IMAGENET_MEAN, IMAGENET_STD, load_backbone, read_state_dict
from models.device import resolve_device
from models.imaging.grid import normalise, resize_unit
from models.metadata import (
    CARDIAC_TAU_REL,
    CHEST_TAU_REL,
    DatasetRecord,
    ModelMetadata,
    ResultSeries,
    Serves,
    TrainingRecord,
    portable_command,
)
from models.ood import fit_ood, write_statistics

if TYPE_CHECKING:
    from models.datasets import Sample

# The chest model's classes; --classes / --positive-class name another application's.
CLASSES = ["no_foreign_object", "foreign_object"]
POSITIVE_CLASS = "foreign_object"
# Normalisation for networks trained from scratch on radiographs in [0, 1]; ImageNet's for --pretrained.
SCRATCH_MEAN = [0.5, 0.5, 0.5]
SCRATCH_STD = [0.25, 0.25, 0.25]

STATE_DIR = "state"
LOG_FILE = "train_log.jsonl"

# Augmentation strengths. The papers name the kinds (colour jitter, affine, horizontal flip), not the amounts;
# these are torchvision-typical and small enough that a foreign object near the lung edge stays in the image.
BRIGHTNESS = 0.2  # factor in [0.8, 1.2]
CONTRAST = 0.2  # factor in [0.8, 1.2]
ROTATION_DEG = 7.0
TRANSLATE = 0.04  # fraction of the width/height
SCALE = 0.08  # factor in [0.92, 1.08]


class TrainError(RuntimeError):
    """A training run cannot start or continue; the message says why."""


# ---------------------------------------------------------------------------------------------------- metrics


# ------------------------------------------------------------------------------------------------------- data


def _split_csv_exists(root: Path, split: str) -> bool:
    return (root / f"{split}.csv").is_file()


def read_samples(root: Path, split: str) -> list[Sample]:
    from models.datasets import read_split  # helper module of the same library

    return read_split(root, split)


def build_cache(
    samples: Sequence[Sample],
    input_size: Sequence[int],
    workers: int = 2,
    dtype: torch.dtype = torch.float32,
    desc: str = "cache",
) -> torch.Tensor:
    """Decode + resize every image once to the model grid: [N, h, w] (float in [0, 1], or uint8 0–255).

    Decoding is models.imaging (the service's own decode path) and the resize models.imaging.grid.resize_unit,
    the same antialiased stretch the service applies: a float32 cache holds exactly the tensor /assess would
    build for the same file (tests/models/test_decode_parity.py). uint8 quarters the memory for very large runs
    at the price of a rounding of at most 1/510.
    """
    from models.datasets import load_gray

    h, w = int(input_size[0]), int(input_size[1])
    out = torch.empty((len(samples), h, w), dtype=dtype)

    def one(i: int) -> None:
        unit = resize_unit(load_gray(samples[i].image_path), (h, w))
        if dtype == torch.uint8:
            out[i] = (unit * 255.0).round_().to(torch.uint8)
        else:
            out[i] = unit.to(dtype)

    from tqdm import tqdm

    bar = tqdm(total=len(samples), desc=desc, unit="img", disable=None, leave=False)
    if workers <= 1:
        for i in range(len(samples)):
            one(i)
            bar.update()
    else:
        # Threads, not processes: PIL decoding and torch resizing release the GIL, and forking after torch
        # has started its OpenMP pool can hang.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(one, range(len(samples))):
                bar.update()
    bar.close()
    return out


def cache_to_unit(batch: torch.Tensor) -> torch.Tensor:
    """A cache slice as float32 in [0, 1]."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    return batch.float()


# ----------------------------------------------------------------------------------------------- augmentation


def augment(unit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Batched colour jitter + affine (rotation, translation, scale) + horizontal flip on [B, h, w] in [0, 1].

    Each image gets its own parameters, drawn from ``generator`` (so an epoch is reproducible from its seed).
    The affine is applied with one ``grid_sample`` call; the area uncovered by the transform is black, as
    collimated film borders are.
    """
    b, h, w = unit.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float32)

    flip = torch.rand(b, generator=generator) < 0.5
    angle = uniform(-ROTATION_DEG, ROTATION_DEG) * (math.pi / 180.0)
    scale = uniform(1.0 - SCALE, 1.0 + SCALE)
    tx = uniform(-TRANSLATE, TRANSLATE)
    ty = uniform(-TRANSLATE, TRANSLATE)
    brightness = uniform(1.0 - BRIGHTNESS, 1.0 + BRIGHTNESS)
    contrast = uniform(1.0 - CONTRAST, 1.0 + CONTRAST)

    # affine_grid maps output to input in normalised coordinates ([-1, 1] across each axis). A rotation by θ
    # and zoom s in pixel space is A = R(θ)/s; in normalised space it is D⁻¹ A D with D = diag(w/2, h/2),
    # which keeps rotations rigid on non-square grids. Flip negates the output x axis.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (h / w)
    theta[:, 1, 0] = sin * (w / h)
    theta[:, 1, 1] = cos
    theta[:, 0, 0] = torch.where(flip, -theta[:, 0, 0], theta[:, 0, 0])
    theta[:, 1, 0] = torch.where(flip, -theta[:, 1, 0], theta[:, 1, 0])
    theta[:, 0, 2] = 2.0 * tx
    theta[:, 1, 2] = 2.0 * ty
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    x = F.grid_sample(unit[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]

    mean = x.mean(dim=(1, 2), keepdim=True)
    x = (x - mean) * contrast[:, None, None] + mean
    x = x * brightness[:, None, None]
    return x.clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model: nn.Module,
    cache: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    positive_index: int = 1,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """P(positive class) for every cached image, in eval mode (the model's mode is restored afterwards)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    probs = []
    for i in range(0, cache.shape[0], batch_size):
        x = normalise(cache_to_unit(cache[i : i + batch_size]).to(device), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        probs.append(torch.softmax(logits.float(), dim=1)[:, positive_index].cpu())
    model.train(was_training)
    return torch.cat(probs).double().numpy() if probs else np.zeros(0)


# --------------------------------------------------------------------------------------------- state (resume)


def _seed_for(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def save_train_state(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: dict[str, Any],
) -> None:
    """Model + optimizer tensors to safetensors, everything else to JSON; written atomically (tmp + rename)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
    info = dict(info)
    info["optimizer_param_groups"] = opt["param_groups"]
    info["optimizer_state_keys"] = {str(i): sorted(st) for i, st in opt["state"].items()}
    info["scheduler"] = scheduler.state_dict()
    tmp_w = folder / "last.safetensors.tmp"
    tmp_j = folder / "last.json.tmp"
    save_file(tensors, str(tmp_w))
    tmp_j.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_w, folder / "last.safetensors")
    os.replace(tmp_j, folder / "last.json")


def load_train_state(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict[str, Any]:
    from safetensors.torch import load_file

    json_path, weights_path = folder / "last.json", folder / "last.safetensors"
    if not json_path.is_file() or not weights_path.is_file():
        raise TrainError(f"--resume: no saved state in {folder} (expected last.json and last.safetensors)")
    info: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
    tensors = load_file(str(weights_path))
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state = {
        int(i): {key: tensors[f"optimizer.{i}.{key}"] for key in keys}
        for i, keys in info["optimizer_state_keys"].items()
    }
    optimizer.load_state_dict({"state": opt_state, "param_groups": info["optimizer_param_groups"]})
    scheduler.load_state_dict(info["scheduler"])
    return info


# ---------------------------------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    """What ``main`` hands back to Python callers (tests): the best model in memory and where it was saved."""

    model: nn.Module
    meta: ModelMetadata
    out: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.train",
        description="Train NormGate's foreign-object classifier with the papers' recipe (Ozer et al. 2021/2023) "
        "on an Object-CXR-layout data set (ROOT/train.csv, ROOT/dev.csv, optional ROOT/test.csv).",
    )
    p.add_argument("--data", required=True, help="data set root (Object-CXR layout, or generic CSVs)")
    p.add_argument("--out", required=True, help="checkpoint folder to write (model.safetensors + model.json)")
    p.add_argument("--arch", default="resnet18", choices=SUPPORTED_ARCHS)
    p.add_argument("--input-size", type=int, default=320, help="square model input grid (papers: 600)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--lr-step", type=int, default=5, help="divide the learning rate by 10 every N epochs")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pretrained",
        help="torchvision state_dict (.pth read with weights_only, or .safetensors); the classifier head is replaced",
    )
    p.add_argument(
        "--test-data",
        default=None,
        help="root whose test.csv is the held-out test split (default: --data); e.g. a set generated with another seed",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/state/last.* (exactly)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding images into the cache")
    p.add_argument(
        "--amp",
        choices=("none", "bf16"),
        default="none",
        help="bfloat16 autocast for forward/backward (weights stay float32)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0 = torch's default). On a shared, oversubscribed CPU 1 thread "
        "can be several times faster than 2: idle OpenMP threads spin while their partner waits",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--fp16-weights", action="store_true", help="store the checkpoint's floats as float16")
    p.add_argument("--name", default="default")
    p.add_argument("--version", default="1")
    p.add_argument(
        "--mean",
        type=float,
        nargs=3,
        default=None,
        help="normalisation mean (default: 0.5, or ImageNet's with --pretrained)",
    )
    p.add_argument("--std", type=float, nargs=3, default=None)
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    p.add_argument(
        "--clean-state",
        action="store_true",
        help="delete OUT/state once the checkpoint is written (for a folder that ships)",
    )
    task = p.add_argument_group("the application (model.json: classes, serves, tau_rel, results)")
    task.add_argument(
        "--classes",
        nargs=2,
        metavar=("NEGATIVE", "POSITIVE"),
        default=list(CLASSES),
        help="the two class names in output order: label 0 (no annotation), label 1 (annotated)",
    )
    task.add_argument(
        "--positive-class",
        default=None,
        help="the class whose probability decides 'reacquire' and that saliency explains (default: the second)",
    )
    task.add_argument("--serves-modality", default=None, help="serves block: Modality pattern, e.g. 'CR|DX|DR' or MR")
    task.add_argument("--serves-body-part", default=None, help="serves block: Body Part Examined pattern")
    task.add_argument("--serves-series-description", default=None, help="serves block: Series Description pattern")
    task.add_argument("--serves-view-position", default=None, help="serves block: View Position pattern")
    task.add_argument(
        "--tau-rel",
        type=float,
        default=None,
        help="the task's Pointing Game tolerance as a fraction of the grid side, recorded in model.json "
        "(default: 15/224 for a models.synth.cmr data set such as the LVOT task's, else 15/600)",
    )
    task.add_argument("--results-series-number", type=int, default=None, help="Series Number of result objects")
    task.add_argument("--results-series-description", default=None, help="Series Description of result objects")
    task.add_argument("--notes", default="", help="a sentence for trained_on.notes (where the data came from)")
    return p


def application_metadata(args: argparse.Namespace, data_root: str | Path) -> dict[str, Any]:
    """The model.json fields of the application from the command line, validated before any training starts:
    classes, positive_class, tau_rel (``--tau-rel``, else the task's from the data set: :func:`task_tau_rel`)
    and the optional serves and results blocks."""
    classes = [str(c) for c in args.classes]
    positive = args.positive_class if args.positive_class is not None else classes[1]
    serves_patterns = {
        "modality": args.serves_modality,
        "body_part_examined": args.serves_body_part,
        "series_description": args.serves_series_description,
        "view_position": args.serves_view_position,
    }
    fields: dict[str, Any] = {
        "classes": classes,
        "positive_class": positive,
        "tau_rel": task_tau_rel(data_root, args.tau_rel),
    }
    if (args.results_series_number is None) != (args.results_series_description is None):
        raise TrainError("--results-series-number and --results-series-description go together")
    if any(v is not None for v in serves_patterns.values()) and args.serves_modality is None:
        raise TrainError("--serves-*: a serves block needs --serves-modality (DICOM is routed by modality first)")
    # The same checks model.json gets when it is loaded (two distinct classes, the positive one of them, …).
    try:
        if args.serves_modality is not None:
            fields["serves"] = Serves(**serves_patterns)
        if args.results_series_number is not None:
            fields["results"] = ResultSeries(
                series_number=args.results_series_number, series_description=args.results_series_description
            )
        ModelMetadata(name="check", version="0", arch=args.arch, input_size=[args.input_size] * 2, **fields)
    except ValueError as exc:
        raise TrainError(f"the application's model.json fields are invalid: {_first_line(exc)}") from None
    return fields


def _first_line(exc: Exception) -> str:
    from pydantic import ValidationError

    from models.metadata import describe_validation_error

    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    return str(exc).splitlines()[0]


def _resolve_device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise TrainError(f"--device {name}: CUDA is not available on this machine") from exc


def _log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def task_tau_rel(data_root: str | Path, given: float | None = None) -> float:
    """The Pointing Game tolerance (fraction of the grid side) that model.json records for this training data.

    ``given`` wins. Otherwise the papers' value for the task: 15 px at 224 for the cardiac MR data of
    ``models.synth.cmr`` (named in its ``synth.json``), 15 px at 600 for chest radiographs (everything else).
    """
    if given is not None:
        if not (0 < given <= 1 and math.isfinite(given)):
            raise TrainError(
                f"--tau-rel (model.json's tau_rel) must be a fraction of the grid side in (0, 1], got {given!r}"
            )
        return float(given)
    summary = Path(data_root) / "synth.json"
    try:
        generator = json.loads(summary.read_text(encoding="utf-8")).get("generator")
    except (OSError, ValueError, AttributeError):
        generator = None
    return CARDIAC_TAU_REL if generator == "models.synth.cmr" else CHEST_TAU_REL


def _settings_fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """Settings that must match for --resume to continue the same run (epochs may grow)."""
    return {
        k: getattr(args, k)
        for k in (
            "arch",
            "input_size",
            "batch_size",
            "lr",
            "lr_step",
            "momentum",
            "weight_decay",
            "seed",
            "amp",
            "pretrained",
            "classes",
            "positive_class",
        )
    }


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """Parse ``argv`` (default: the command line), train, and return the best model and its checkpoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return run(args, "python -m models.train " + portable_command(list(argv)))


def run(args: argparse.Namespace, command: str) -> TrainResult:
    from tqdm import tqdm

    from models.datasets import dataset_fingerprint

    if args.epochs < 1 or args.batch_size < 2 or args.lr <= 0 or args.lr_step < 1:
        raise TrainError("need --epochs ≥ 1, --batch-size ≥ 2, --lr > 0, --lr-step ≥ 1")
    if not 32 <= args.input_size <= 4096:
        raise TrainError(f"--input-size must be in 32..4096, got {args.input_size}")
    if args.threads < 0:
        raise TrainError(f"--threads must be ≥ 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _resolve_device(args.device)
    root = Path(args.data)
    out = Path(args.out)
    state_dir = out / STATE_DIR
    size = [args.input_size, args.input_size]
    mean = args.mean or (IMAGENET_MEAN if args.pretrained else SCRATCH_MEAN)
    std = args.std or (IMAGENET_STD if args.pretrained else SCRATCH_STD)
    amp = args.amp == "bf16"
    channels_last = not args.no_channels_last
    application = application_metadata(args, root)  # tau_rel included: checked before hours of training
    classes: list[str] = application["classes"]
    # Label 1 (an annotated image: the quality problem) is the positive class, whichever output it is.
    positive_index = classes.index(application["positive_class"])

    # ---- data
    if not root.is_dir():
        raise TrainError(f"--data {root}: no such folder")
    for split in ("train", "dev"):
        if not _split_csv_exists(root, split):
            raise TrainError(f"--data {root}: missing {split}.csv (training needs train and dev splits)")
    splits = {"train": read_samples(root, "train"), "dev": read_samples(root, "dev")}
    for name, samples in splits.items():
        if not samples:
            raise TrainError(f"--data {root}: {name}.csv lists no images")
    test_root = Path(args.test_data) if args.test_data else root
    if args.test_data and not _split_csv_exists(test_root, "test"):
        raise TrainError(f"--test-data {test_root}: missing test.csv")
    if _split_csv_exists(test_root, "test"):
        test_samples = read_samples(test_root, "test")
        if test_samples:
            splits["test"] = test_samples
        else:
            _log(f"{test_root / 'test.csv'} lists no images: no test metrics")
    train_labels = torch.tensor([s.label for s in splits["train"]], dtype=torch.long)
    if int(train_labels.sum()) in (0, len(train_labels)):
        raise TrainError(f"--data {root}: train.csv has only one class; need positives and negatives")
    # The output index each image is trained towards: the positive class's for label 1, the other one's for 0.
    train_targets = train_labels if positive_index == 1 else 1 - train_labels
    fingerprints = {name: dataset_fingerprint(samples) for name, samples in splits.items()}

    # ---- model, optimiser, schedule (seeded: the same --seed gives the same initial weights)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, num_classes=len(classes))
    if args.pretrained:
        load_backbone(model, read_state_dict(args.pretrained), args.pretrained, args.arch)
        reset_classifier_head(model, generator=torch.Generator().manual_seed(args.seed))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=0.1)

    start_epoch = 0
    best: dict[str, Any] = {"epoch": None, "dev_accuracy": -1.0, "dev_auc": -1.0}
    history: list[dict[str, Any]] = []
    commands = [command]
    settings = _settings_fingerprint(args)
    if args.resume:
        info = load_train_state(state_dir, model, optimizer, scheduler)
        if info["settings"] != settings:
            diff = {k: (info["settings"].get(k), v) for k, v in settings.items() if info["settings"].get(k) != v}
            raise TrainError(f"--resume: settings differ from the saved run (saved, now): {diff}")
        if info["fingerprints"]["train"] != fingerprints["train"] or info["fingerprints"]["dev"] != fingerprints["dev"]:
            raise TrainError(f"--resume: the data in {root} differs from the saved run's (fingerprint mismatch)")
        start_epoch, best, history = info["epoch"], info["best"], info["history"]
        commands = [*info.get("commands", []), command]
        if start_epoch >= args.epochs:
            _log(f"resume: already trained {start_epoch} epoch(s) ≥ --epochs {args.epochs}; writing the checkpoint")
    elif (state_dir / "last.json").exists():
        raise TrainError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")

    # ---- caches (decode + resize once)
    t0 = time.perf_counter()
    train_cache = build_cache(splits["train"], size, args.workers, torch.float32, desc="train cache")
    dev_cache = build_cache(splits["dev"], size, args.workers, torch.float32, desc="dev cache")
    dev_labels = np.array([s.label for s in splits["dev"]])
    _log(
        f"cached {len(train_cache)} train + {len(dev_cache)} dev images at {size[0]}×{size[1]} "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    n = train_cache.shape[0]
    bs = args.batch_size
    best_state_path = state_dir / "best.safetensors"
    log_path = out / LOG_FILE
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, args.epochs):
        t_epoch = time.perf_counter()
        epoch_seed = _seed_for(args.seed, epoch + 1)
        gen = torch.Generator().manual_seed(epoch_seed)
        torch.manual_seed(epoch_seed)  # dropout / stochastic depth (EfficientNet) draw from the global RNG
        order = torch.randperm(n, generator=gen)
        # A last batch of one image would give BatchNorm a single value per channel: fold it into the previous.
        batches = [order[i : i + bs] for i in range(0, n, bs)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches[-2] = torch.cat([batches[-2], batches.pop()])
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", disable=None, leave=False)
        for idx in bar:
            unit = augment(cache_to_unit(train_cache[idx]), gen)
            x = normalise(unit, mean, std).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_targets[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise TrainError(f"epoch {epoch + 1}: the loss became {loss.item()} (try a smaller --lr)")
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        bar.close()
        scheduler.step()
        train_seconds = time.perf_counter() - t_epoch

        dev_probs = predict(
            model, dev_cache, mean, std, positive_index, device=device, amp=amp, channels_last=channels_last
        )
        dev = classification_metrics(dev_labels, dev_probs)
        dev_auc = dev["auc"] if dev["auc"] is not None else -1.0
        improved = (dev["accuracy"], dev_auc) > (best["dev_accuracy"], best["dev_auc"])
        if improved:
            from safetensors.torch import save_file

            state_dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(best_state_path))
            best = {"epoch": epoch + 1, "dev_accuracy": dev["accuracy"], "dev_auc": dev_auc}
        seconds = time.perf_counter() - t_epoch
        entry = {
            "epoch": epoch + 1,
            "loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "dev_accuracy": dev["accuracy"],
            "dev_auc": dev["auc"],
            "lr": lr,
            "seconds": round(seconds, 2),
            "train_images_per_second": round(seen / train_seconds, 2),
            "best": improved,
        }
        history.append(entry)
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        _log(
            f"epoch {epoch + 1}/{args.epochs}  loss {entry['loss']:.4f}  train acc {entry['train_accuracy']:.3f}  "
            f"dev acc {dev['accuracy']:.3f}  dev AUC {dev_auc:.4f}  lr {lr:g}  {seconds:.1f}s "
            f"({entry['train_images_per_second']:.1f} img/s){'  *best*' if improved else ''}"
        )
        save_train_state(
            state_dir,
            model,
            optimizer,
            scheduler,
            {
                "epoch": epoch + 1,
                "best": best,
                "history": history,
                "settings": settings,
                "fingerprints": fingerprints,
                "commands": commands,
                "epoch_seeds": [_seed_for(args.seed, e + 1) for e in range(epoch + 1)],
            },
        )

    # ---- the best epoch becomes the checkpoint; its metrics are measured on the saved folder itself
    if best["epoch"] is None or not best_state_path.is_file():
        raise TrainError(f"no best model saved in {state_dir}; nothing to write")
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(best_state_path)))
    model.eval()
    # Data sets are named by content (fingerprint, sizes), never by where they lay on this machine.
    trained_on = TrainingRecord(
        data=[
            DatasetRecord(
                split=name,
                fingerprint=fingerprints[name],
                size=len(samples),
                positives=int(sum(s.label for s in samples)),
            )
            for name, samples in splits.items()
        ],
        commands=commands,
        seconds=round(sum(h["seconds"] for h in history), 1),
        seed=args.seed,
        epochs=args.epochs,
        best_epoch=best["epoch"],
        pretrained=Path(args.pretrained).name if args.pretrained else None,
        amp=args.amp,
        device=str(device),
        notes=args.notes,
    )
    meta = ModelMetadata(
        name=args.name,
        version=args.version,
        arch=args.arch,
        input_size=size,
        mean=list(mean),
        std=list(std),
        threshold=0.5,
        normgrad_layers=default_normgrad_layers(args.arch),
        trained_on=trained_on,
        metrics={},
        **application,
    )
    dtype = torch.float16 if args.fp16_weights else torch.float32
    save_checkpoint(model, meta, out, dtype=dtype)

    shipped = load_checkpoint(out, device=device)
    metrics: dict[str, Any] = {"best_epoch": best["epoch"], "weights_dtype": str(dtype).replace("torch.", "")}
    metrics["dev"] = classification_metrics(
        dev_labels, predict(shipped.model, dev_cache, mean, std, positive_index, device=device)
    )
    test_cache = None
    if "test" in splits:
        test_cache = build_cache(splits["test"], size, args.workers, torch.float32, desc="test cache")
        test_labels = np.array([s.label for s in splits["test"]])
        metrics["test"] = classification_metrics(
            test_labels, predict(shipped.model, test_cache, mean, std, positive_index, device=device)
        )
    # The out-of-distribution statistics of the shipped weights: fitted on train, threshold on dev, measured
    # on test (models.ood; served as the unassessable/out_of_distribution decision).
    ood = fit_ood(
        shipped.model,
        meta,
        train_cache,
        train_targets.tolist(),
        dev_cache,
        test_cache,
        device=device,
        data=trained_on.data,
    )
    del dev_cache, train_cache, test_cache
    write_statistics(out, ood.statistics, ood.check)
    meta.metrics = metrics
    meta.ood = ood.check
    (out / "model.json").write_text(json.dumps(meta.to_dict(), indent=2) + "\n", encoding="utf-8")
    test_rate = ood.check.test_pass_rate
    _log(
        f"OOD check: threshold {ood.check.threshold:.3f} passes {ood.check.dev_pass_rate:.3f} of dev"
        + (f", {test_rate:.3f} of test" if test_rate is not None else "")
    )
    summary = "  ".join(
        f"{k} acc {v['accuracy']:.4f} AUC {v['auc'] if v['auc'] is None else round(v['auc'], 4)} (n={v['n']})"
        for k, v in metrics.items()
        if isinstance(v, dict)
    )
    _log(f"best epoch {best['epoch']}: {summary}; checkpoint in {out}")
    if args.clean_state:
        shutil.rmtree(state_dir, ignore_errors=True)
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return TrainResult(model=model, meta=meta, out=out, history=history)


if __name__ == "__main__":
    try:
        main()
    except (TrainError, ValueError) as exc:  # CheckpointError and DatasetError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
