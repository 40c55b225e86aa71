"""A backbone pretrained by a self-supervised pretext task on unlabelled radiographs, for ``--init
pretrained-backbone`` (docs/evaluation.md, "Initialisations").

The papers' "semi-random" model is an ImageNet-pretrained backbone with a randomly initialised head: a network
that has learned generic image features but nothing about the task. No ImageNet weights exist offline, so
NormGate pretrains its own backbone without labels: **rotation prediction** (Gidaris, Singh & Komodakis,
"Unsupervised representation learning by predicting image rotations", ICLR 2018). Each image is turned by
k × 90° (k ∈ {0, 1, 2, 3}, drawn per image) and the network learns to tell k — which needs the anatomy's
layout (apices up, heart, diaphragm, spine) but never sees a label, a box or a foreign-object class. Images are
read from a split's image folder; its CSV (labels, annotations) is never opened.

The recipe: SGD with momentum 0.9, weight decay 1e-4, cosine learning rate from 0.05, batch 32, the training
augmentation of :mod:`models.train` (colour jitter, small affine, horizontal flip) before the rotation, the
images resized to a square grid and normalised with mean 0.5 / std 0.25 (NormGate's from-scratch values). The
last 10 % of the images (in file order) are held out to report the pretext accuracy (chance: 0.25).

    python -m models.pretext --data DATA_ROOT --split train --arch resnet18 --input-size 128 --images 1000 \\
        --epochs 4 --seed 0 --threads 1 --out artifacts/pretext/resnet18

writes ``OUT/backbone.safetensors`` (the whole network, its 4-way head included; :func:`load_pretext_backbone`
drops the head) and ``OUT/pretext.json`` (arch, grid, recipe, data fingerprint, held-out accuracy, seconds and
the command). The same command with the same data and seed gives the same weights (one thread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import SUPPORTED_ARCHS, build_model
from models.checkpoint import CheckpointError
from models.convert import load_backbone
from models.datasets import IMAGE_SUFFIXES, load_gray
from models.imaging.grid import normalise, resize_unit
from models.metadata import portable_command
from models.train import SCRATCH_MEAN, SCRATCH_STD, augment

PRETEXT_WEIGHTS = "backbone.safetensors"
PRETEXT_META = "pretext.json"
PRETEXT_TASK = "rotation-4"
ROTATIONS = 4
HELD_OUT_FRACTION = 0.1


class PretextError(ValueError):
    """A bad pretext request or folder (names the file or flag)."""


@dataclass(frozen=True)
class PretextRecipe:
    arch: str = "resnet18"
    input_size: int = 128
    epochs: int = 4
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0


def unlabelled_images(root: str | Path, split: str, limit: int | None = None) -> list[Path]:
    """The image files of ``ROOT/<split>/`` in sorted order (at most ``limit``); no CSV is read."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise PretextError(f"--data {root}: no image folder {split}/")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit is not None:
        files = files[:limit]
    if len(files) < 10:
        raise PretextError(f"{folder}: found {len(files)} images; the pretext task needs at least 10")
    return files


def rotate_quarters(unit: torch.Tensor, quarters: torch.Tensor) -> torch.Tensor:
    """Each image [B, H, W] (square) turned counter-clockwise by ``quarters[i]`` × 90°."""
    if unit.shape[-1] != unit.shape[-2]:
        raise PretextError(f"rotation needs a square grid, got {tuple(unit.shape[-2:])}")
    return torch.stack([torch.rot90(img, int(k), dims=(0, 1)) for img, k in zip(unit, quarters)])


def _as_input(unit: torch.Tensor) -> torch.Tensor:
    return normalise(unit, SCRATCH_MEAN, SCRATCH_STD)


@torch.no_grad()
def rotation_accuracy(model: nn.Module, unit: torch.Tensor, batch_size: int = 64) -> float:
    """Share of (image, rotation) pairs whose rotation the model names, over all four rotations of each image."""
    model.eval()
    correct = total = 0
    for k in range(ROTATIONS):
        for start in range(0, unit.shape[0], batch_size):
            chunk = unit[start : start + batch_size]
            quarters = torch.full((chunk.shape[0],), k)
            predicted = model(_as_input(rotate_quarters(chunk, quarters))).argmax(1)
            correct += int((predicted == k).sum())
            total += chunk.shape[0]
    return correct / total


def train_pretext(unit: torch.Tensor, recipe: PretextRecipe, log: bool = True) -> tuple[nn.Module, dict[str, float]]:
    """Train ``recipe.arch`` to predict rotations of ``unit`` [N, s, s]; returns the model and its held-out stats."""
    n_held = max(1, round(HELD_OUT_FRACTION * unit.shape[0]))
    train, held = unit[:-n_held], unit[-n_held:]
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.arch, num_classes=ROTATIONS)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    steps_per_epoch = math.ceil(train.shape[0] / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    step = 0
    loss_value = float("nan")
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(train.shape[0], generator=generator)
        for start in range(0, train.shape[0], recipe.batch_size):
            index = order[start : start + recipe.batch_size]
            if index.numel() < 2:  # batch norm needs two samples
                continue
            quarters = torch.randint(0, ROTATIONS, (index.numel(),), generator=generator)
            x = _as_input(rotate_quarters(augment(train[index], generator), quarters))
            for group in optimiser.param_groups:
                group["lr"] = 0.5 * recipe.lr * (1.0 + math.cos(math.pi * step / total_steps))
            loss = F.cross_entropy(model(x), quarters)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_value = float(loss.detach())
            step += 1
        if log:
            print(f"pretext epoch {epoch + 1}/{recipe.epochs}: last batch loss {loss_value:.3f}", file=sys.stderr)
    model.eval()
    stats = {
        "held_out_rotation_accuracy": rotation_accuracy(model, held),
        "final_loss": loss_value,
    }
    return model, stats


def save_pretext(model: nn.Module, folder: str | Path, record: dict[str, object]) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / PRETEXT_WEIGHTS), metadata={"format": "pt", "task": PRETEXT_TASK})
    (folder / PRETEXT_META).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return folder


def load_pretext_backbone(folder: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """``(arch, state dict)`` of a pretext folder; the state still has the pretext head (dropped on apply)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights_path = folder / PRETEXT_META, folder / PRETEXT_WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise PretextError(
            f"{folder}: not a pretext folder (needs {PRETEXT_META} and {PRETEXT_WEIGHTS}; "
            "make one with python -m models.pretext)"
        )
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
        arch = str(record["arch"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PretextError(f"{meta_path}: unreadable pretext record ({exc})") from exc
    if arch not in SUPPORTED_ARCHS:
        raise PretextError(f"{meta_path}: unknown arch {arch!r}")
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise PretextError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    return arch, state


def apply_pretext_backbone(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy every pretext tensor except the head into ``model``; its own head is left for the caller to set."""
    arch = type(model).__name__
    try:
        load_backbone(model, state, "pretext backbone", arch)
    except CheckpointError as exc:
        raise PretextError(str(exc)) from exc


def _fingerprint(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode("utf-8"))
        digest.update(path.stat().st_size.to_bytes(8, "little"))
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = PretextRecipe()
    p = argparse.ArgumentParser(prog="python -m models.pretext", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="data set root; images are read from ROOT/<split>/ (no labels)")
    p.add_argument("--split", default="train")
    p.add_argument("--arch", default=defaults.arch, choices=SUPPORTED_ARCHS)
    p.add_argument("--input-size", type=int, default=defaults.input_size, help="square grid side")
    p.add_argument("--images", type=int, default=None, help="use only the first N images (sorted by name)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--out", required=True, help="folder to write backbone.safetensors + pretext.json into")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or not 32 <= args.input_size <= 1024:
        raise PretextError("need --epochs ≥ 1, --batch-size ≥ 2 and --input-size in 32..1024")
    torch.set_num_threads(max(1, args.threads))
    recipe = PretextRecipe(
        arch=args.arch,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    started = time.monotonic()
    files = unlabelled_images(args.data, args.split, args.images)
    size = (recipe.input_size, recipe.input_size)
    unit = torch.stack([resize_unit(load_gray(f), size) for f in files])
    model, stats = train_pretext(unit, recipe)
    record: dict[str, object] = {
        "task": PRETEXT_TASK,
        "arch": recipe.arch,
        "input_size": list(size),
        "mean": SCRATCH_MEAN,
        "std": SCRATCH_STD,
        "recipe": asdict(recipe),
        "images": len(files),
        "held_out_images": max(1, round(HELD_OUT_FRACTION * len(files))),
        "data_fingerprint": _fingerprint(files),
        **stats,
        "seconds": round(time.monotonic() - started, 1),
        "command": "python -m models.pretext " + portable_command(argv),
    }
    out = save_pretext(model, args.out, record)
    print(
        f"pretext {recipe.arch} on {len(files)} images: held-out rotation accuracy "
        f"{stats['held_out_rotation_accuracy']:.3f} (chance 0.25), {record['seconds']} s → {out}"
    )
    return out


if __name__ == "__main__":
    main()
