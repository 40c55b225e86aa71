"""Out-of-distribution score of a classifier's penultimate features: Mahalanobis distance to the training split.

Method (Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018, §2): the pooled features f(x) of the training images are modelled as one Gaussian per
class with a *shared* covariance Σ. The score of an image is its distance to the nearest class mean,

    score(x) = min_c sqrt( (f(x) − μ_c)ᵀ Σ⁻¹ (f(x) − μ_c) ),

so images of either class score low and images unlike anything in training score high. Σ is the within-class
covariance of the training features, shrunk towards a scaled identity by the Ledoit–Wolf estimate
(Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", J. Multivariate
Analysis 2004, Lemmas 3.2–3.4 and Theorem 3.1): the features have hundreds of dimensions (512 for ResNet-18)
and the plain sample covariance of a few thousand images is ill-conditioned.

The features are the output of the global average pool in front of the classifier (``avgpool`` in
torchvision's ResNets and EfficientNet), recorded by a forward hook on the very forward pass that gives the
probabilities (:class:`FeatureRecorder`), so scoring costs no second pass. The threshold is the smallest score
that at least ``pass_rate`` (99 %) of the dev split reach or stay under: by construction ≥ 99 % of dev images
pass, and the share of the *test* split above it is the measured false-unassessable rate.

Files (docs/formats.md, "model.json"): ``ood.safetensors`` beside the weights holds ``means`` [classes, D] and
``precision`` [D, D] (float32); the ``ood`` block of ``model.json`` holds the threshold and how it was chosen.

``python -m models.ood fit --model DIR --data ROOT [--test-data ROOT]`` fits the statistics of an existing
checkpoint (``python -m models.train`` does the same at the end of training); ``python -m models.ood score
--model DIR FILE…`` prints the scores of image files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.metadata import DatasetRecord, ModelMetadata, OodCheck

__all__ = [
    "DEFAULT_PASS_RATE",
    "FEATURES_LAYER",
    "OOD_FILE",
    "FeatureRecorder",
    "MahalanobisStatistics",
    "OodError",
    "choose_threshold",
    "extract_features",
    "fit_mahalanobis",
    "fit_ood",
    "ledoit_wolf",
    "load_ood",
    "save_ood",
    "write_statistics",
]

OOD_FILE = "ood.safetensors"
# The global average pool before the classifier, by that name in torchvision's ResNets and EfficientNet.
FEATURES_LAYER = "avgpool"
DEFAULT_PASS_RATE = 0.99

FloatArray = npt.NDArray[np.float64]


class OodError(ValueError):
    """The statistics cannot be fitted, read or used; the message names the file or the cause."""


# ---------------------------------------------------------------------------------------------- statistics


def ledoit_wolf(centred: FloatArray) -> tuple[FloatArray, float]:
    """(shrunk covariance, shrinkage) of rows that are already centred, by Ledoit & Wolf (2004).

    With S = XᵀX / n, m = tr(S)/p and the scaled Frobenius norm ‖A‖² = tr(AAᵀ)/p (their notation):
    d² = ‖S − mI‖², b̄² = (1/n²) Σ_k ‖x_k x_kᵀ − S‖², b² = min(b̄², d²), and the estimate is
    (b²/d²) m I + (1 − b²/d²) S. Σ_k ‖x_k x_kᵀ − S‖² expands to Σ_k ‖x_k‖⁴ − n‖S‖² (scaled by 1/p), which is
    what is computed here without forming n outer products.
    """
    n, p = centred.shape
    if n < 1 or p < 1:
        raise OodError(f"need at least one feature vector, got an array of shape {centred.shape}")
    sample = centred.T @ centred / n
    m = float(np.trace(sample)) / p
    if not m > 0:
        raise OodError("the features do not vary at all; the network's pooled features are constant")
    frobenius2 = float((sample * sample).sum()) / p  # ‖S‖²
    d2 = frobenius2 - m * m  # ‖S − mI‖² = ‖S‖² − 2m·tr(S)/p + m² = ‖S‖² − m²
    row_norms2 = (centred * centred).sum(axis=1)
    b_bar2 = (float((row_norms2 * row_norms2).sum()) / p - n * frobenius2) / (n * n)
    b2 = min(max(b_bar2, 0.0), d2)
    shrinkage = 1.0 if d2 <= 0 else b2 / d2
    shrunk = (1.0 - shrinkage) * sample
    shrunk[np.diag_indices(p)] += shrinkage * m
    return shrunk, shrinkage


@dataclass(frozen=True)
class MahalanobisStatistics:
    """Class means and the shared precision (inverse covariance) of the training features."""

    means: FloatArray  # [classes, D]
    precision: FloatArray  # [D, D], symmetric positive definite
    shrinkage: float = 0.0

    @property
    def dimension(self) -> int:
        return int(self.means.shape[1])

    def as_stored(self) -> MahalanobisStatistics:
        """The statistics as ``ood.safetensors`` keeps them (float32): scores from these are the served ones."""
        return MahalanobisStatistics(
            means=self.means.astype(np.float32).astype(np.float64),
            precision=self.precision.astype(np.float32).astype(np.float64),
            shrinkage=self.shrinkage,
        )

    def score(self, features: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Distance of each feature row [N, D] to the nearest class mean (module docstring)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise OodError(f"features of shape {x.shape} do not match statistics of dimension {self.dimension}")
        # In torch, float64: it runs on the threads torch is given (the service's NORMGATE_TORCH_THREADS), where
        # numpy's BLAS would start its own pool next to the model's and, on a busy CPU, wait ~30 ms for it.
        diff = torch.from_numpy(x)[:, None, :] - torch.from_numpy(self.means)[None]  # [N, classes, D]
        squared = ((diff @ torch.from_numpy(self.precision)) * diff).sum(dim=-1)
        result: FloatArray = squared.min(dim=1).values.clamp_(min=0.0).sqrt_().numpy()
        return result


def fit_mahalanobis(features: npt.NDArray[np.floating[Any]], labels: Sequence[int]) -> MahalanobisStatistics:
    """Class means and the Ledoit–Wolf-shrunk shared within-class covariance's inverse (module docstring)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise OodError(f"need features [N, D] with one label each, got {x.shape} and {y.shape[0]} labels")
    if not np.isfinite(x).all():
        raise OodError("the features contain NaN or infinite values")
    classes = sorted(set(y.tolist()))
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    covariance, shrinkage = ledoit_wolf(centred)
    try:
        factor = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        raise OodError("the shrunk covariance is not positive definite (features of too few images?)") from None
    inverse_factor = np.linalg.inv(factor)
    precision = inverse_factor.T @ inverse_factor
    return MahalanobisStatistics(means=means, precision=(precision + precision.T) / 2, shrinkage=shrinkage)


def choose_threshold(dev_scores: npt.NDArray[np.floating[Any]], pass_rate: float = DEFAULT_PASS_RATE) -> float:
    """The smallest score that at least ``pass_rate`` of ``dev_scores`` are at or below (the k-th smallest,
    k = ⌈pass_rate · n⌉)."""
    scores = np.sort(np.asarray(dev_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise OodError("no dev scores to choose the threshold on")
    if not 0 < pass_rate <= 1:
        raise OodError(f"pass rate must be in (0, 1], got {pass_rate}")
    k = min(scores.size, max(1, math.ceil(pass_rate * scores.size - 1e-9)))
    return float(scores[k - 1])


def pass_rate_at(scores: npt.NDArray[np.floating[Any]], threshold: float) -> float:
    """Share of ``scores`` at or below ``threshold`` (assessed, not out of distribution)."""
    values = np.asarray(scores, dtype=np.float64)
    return float((values <= threshold).mean()) if values.size else float("nan")


# -------------------------------------------------------------------------------------------- the features


class FeatureRecorder:
    """Records the pooled features of the forward pass whose input is ``images`` (flattened to [B, D]).

    A forward pre-hook on the model marks the pass that starts on the caller's own tensor (same storage and
    shape, as ``models.saliency.hooks.ModelOutputRecorder`` recognises it), a forward hook on the features
    layer keeps its output during that pass only, and the model's forward hook ends the mark. Passes of other
    threads, and the extra passes a saliency method runs on perturbed inputs, are ignored. Every hook is
    removed on exit, also when the forward raised.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, layer: str = FEATURES_LAYER) -> None:
        modules = dict(model.named_modules())
        if layer not in modules or layer == "":
            raise OodError(f"the model has no module {layer!r} to take pooled features from")
        self.model = model
        self.layer_module = modules[layer]
        self._pointer = images.data_ptr()
        self._shape = images.shape
        self.features: torch.Tensor | None = None
        self._inside = False
        self._owner: int | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _enter_pass(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if (
            threading.get_ident() == self._owner
            and inputs
            and isinstance(inputs[0], torch.Tensor)
            and inputs[0].data_ptr() == self._pointer
            and inputs[0].shape == self._shape
        ):
            self._inside = True

    def _leave_pass(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if threading.get_ident() == self._owner:
            self._inside = False

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if self._inside and self.features is None and isinstance(output, torch.Tensor):
            self.features = output.detach().flatten(1).float()

    def __enter__(self) -> FeatureRecorder:
        self._owner = threading.get_ident()
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._enter_pass))
            self._handles.append(self.model.register_forward_hook(self._leave_pass))
            self._handles.append(self.layer_module.register_forward_hook(self._record))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inside = False

    def __exit__(self, *exc: object) -> None:
        self._remove()


def _batches(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    unit_images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    layer: str = FEATURES_LAYER,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> npt.NDArray[np.float32]:
    """Pooled features [N, D] of images [N, h, w] in [0, 1] at the model grid, in eval mode (restored after)."""
    from models.imaging.grid import normalise

    device = torch.device(device)
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []
    try:
        for part in _batches(unit_images.shape[0], batch_size):
            x = normalise(unit_images[part].float().to(device), mean, std).contiguous()
            with FeatureRecorder(model, x, layer) as recorder:
                model(x)
            if recorder.features is None:
                raise OodError(f"layer {layer!r} did not run in the model's forward pass")
            rows.append(recorder.features.cpu())
    finally:
        model.train(was_training)
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(rows).numpy().astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------ fit, save, load


@dataclass(frozen=True)
class OodFit:
    statistics: MahalanobisStatistics
    check: OodCheck
    dev_scores: FloatArray
    test_scores: FloatArray | None


def fit_ood(
    model: nn.Module,
    meta: ModelMetadata,
    train_images: torch.Tensor,
    train_labels: Sequence[int],
    dev_images: torch.Tensor,
    test_images: torch.Tensor | None = None,
    pass_rate: float = DEFAULT_PASS_RATE,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    data: Sequence[DatasetRecord] = (),
) -> OodFit:
    """Fit the statistics on the training images, set the threshold on dev, measure the test pass rate.

    Images are [N, h, w] in [0, 1] at the model grid (``models.train.build_cache``); ``data`` names the splits
    (fingerprints) in the ``ood`` block."""
    features = extract_features(model, train_images, meta.mean, meta.std, FEATURES_LAYER, batch_size, device)
    # Threshold and pass rates come from the statistics exactly as stored, so they are what serving computes.
    statistics = fit_mahalanobis(features, train_labels).as_stored()
    dev_features = extract_features(model, dev_images, meta.mean, meta.std, FEATURES_LAYER, batch_size, device)
    dev_scores = statistics.score(dev_features)
    threshold = choose_threshold(dev_scores, pass_rate)
    if not threshold > 0:
        raise OodError("every dev image scored 0: the statistics cannot separate anything")
    test_scores = None
    if test_images is not None and test_images.shape[0] > 0:
        test_features = extract_features(model, test_images, meta.mean, meta.std, FEATURES_LAYER, batch_size, device)
        test_scores = statistics.score(test_features)
    check = OodCheck(
        method="mahalanobis",
        file=OOD_FILE,
        layer=FEATURES_LAYER,
        threshold=threshold,
        target_pass_rate=pass_rate,
        dev_pass_rate=pass_rate_at(dev_scores, threshold),
        test_pass_rate=None if test_scores is None else pass_rate_at(test_scores, threshold),
        shrinkage=statistics.shrinkage,
        train_size=int(features.shape[0]),
        dev_size=int(dev_scores.shape[0]),
        test_size=None if test_scores is None else int(test_scores.shape[0]),
        data=list(data),
    )
    return OodFit(statistics=statistics, check=check, dev_scores=dev_scores, test_scores=test_scores)


def write_statistics(folder: str | Path, statistics: MahalanobisStatistics, check: OodCheck) -> None:
    """Write the statistics to the file ``check`` names in ``folder`` (float32 tensors ``means``, ``precision``)."""
    from safetensors.torch import save_file

    tensors = {
        "means": torch.from_numpy(statistics.means.astype(np.float32)).contiguous(),
        "precision": torch.from_numpy(statistics.precision.astype(np.float32)).contiguous(),
    }
    save_file(tensors, str(Path(folder) / check.file), metadata={"method": check.method, "layer": check.layer})


def save_ood(folder: str | Path, statistics: MahalanobisStatistics, check: OodCheck) -> None:
    """Write ``ood.safetensors`` and put the ``ood`` block into the folder's ``model.json``."""
    from models.checkpoint import META_FILE, read_metadata

    folder = Path(folder)
    meta = read_metadata(folder)
    write_statistics(folder, statistics, check)
    meta.ood = check
    (folder / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_ood(folder: str | Path, meta: ModelMetadata) -> MahalanobisStatistics | None:
    """The statistics the ``ood`` block of ``meta`` names, or None when it has none."""
    if meta.ood is None:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / meta.ood.file
    if not path.is_file():
        raise OodError(f"{path}: no such file (model.json's ood block names it)")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise OodError(f"{path}: not a readable safetensors file ({exc})") from exc
    means, precision = tensors.get("means"), tensors.get("precision")
    if means is None or precision is None:
        raise OodError(f"{path}: needs tensors 'means' and 'precision', has {sorted(tensors)}")
    if means.dim() != 2 or precision.shape != (means.shape[1], means.shape[1]):
        raise OodError(f"{path}: means {tuple(means.shape)} and precision {tuple(precision.shape)} do not fit")
    if means.shape[0] != len(meta.classes):
        raise OodError(f"{path}: {means.shape[0]} class means for {len(meta.classes)} classes")
    return MahalanobisStatistics(
        means=means.double().numpy(), precision=precision.double().numpy(), shrinkage=meta.ood.shrinkage or 0.0
    )


# ------------------------------------------------------------------------------------------------------ CLI


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.ood", description="Out-of-distribution statistics of a checkpoint (Mahalanobis)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser(
        "fit", help="fit ood.safetensors and the ood block of model.json on a data set's train/dev(/test) splits"
    )
    fit.add_argument("--model", required=True, help="checkpoint folder (model.json + model.safetensors)")
    fit.add_argument("--data", required=True, help="data set root with train.csv and dev.csv (Object-CXR layout)")
    fit.add_argument("--test-data", help="root whose test.csv measures the false-unassessable rate (default --data)")
    fit.add_argument("--pass-rate", type=float, default=DEFAULT_PASS_RATE, help="share of dev that must pass")
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--workers", type=int, default=2, help="threads decoding images")
    fit.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    fit.add_argument("--device", default="cpu")
    score = commands.add_parser("score", help="print the OOD score of image files (DICOM/PNG/JPEG)")
    score.add_argument("--model", required=True)
    score.add_argument("files", nargs="+")
    return parser


def _fit_command(args: argparse.Namespace) -> dict[str, Any]:
    from models.checkpoint import load_checkpoint
    from models.datasets import Sample, dataset_fingerprint
    from models.train import build_cache, read_samples

    def record(split: str, samples: list[Sample]) -> DatasetRecord:
        return DatasetRecord(
            split=split,
            fingerprint=dataset_fingerprint(samples),
            size=len(samples),
            positives=sum(s.label for s in samples),
        )

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.model, device=args.device)
    meta = checkpoint.meta
    root = Path(args.data)
    test_root = Path(args.test_data) if args.test_data else root
    train = read_samples(root, "train")
    dev = read_samples(root, "dev")
    test = read_samples(test_root, "test") if (test_root / "test.csv").is_file() else []
    size = list(meta.input_size)
    train_images = build_cache(train, size, args.workers, desc="train cache")
    dev_images = build_cache(dev, size, args.workers, desc="dev cache")
    test_images = build_cache(test, size, args.workers, desc="test cache") if test else None
    fitted = fit_ood(
        checkpoint.model,
        meta,
        train_images,
        [s.label for s in train],
        dev_images,
        test_images,
        pass_rate=args.pass_rate,
        device=args.device,
        batch_size=args.batch_size,
        data=[record("train", train), record("dev", dev)] + ([record("test", test)] if test else []),
    )
    save_ood(args.model, fitted.statistics, fitted.check)
    summary: dict[str, Any] = fitted.check.model_dump()
    summary["dev_score_quantiles"] = _quantiles(fitted.dev_scores)
    if fitted.test_scores is not None:
        summary["test_score_quantiles"] = _quantiles(fitted.test_scores)
        summary["test_false_unassessable"] = int((fitted.test_scores > fitted.check.threshold).sum())
    return summary


def _quantiles(scores: FloatArray) -> dict[str, float]:
    return {f"p{q:g}": round(float(np.percentile(scores, q)), 4) for q in (0, 50, 90, 99, 100)}


def _score_command(args: argparse.Namespace) -> dict[str, Any]:
    from models.checkpoint import load_checkpoint
    from models.imaging import decode_file
    from models.imaging.grid import resize_unit

    checkpoint = load_checkpoint(args.model)
    statistics = load_ood(args.model, checkpoint.meta)
    if statistics is None or checkpoint.meta.ood is None:
        raise OodError(f"{args.model}: model.json has no ood block; run python -m models.ood fit first")
    threshold = checkpoint.meta.ood.threshold
    results: dict[str, Any] = {"threshold": threshold, "scores": {}}
    for name in args.files:
        decoded = decode_file(name)
        unit = resize_unit(decoded.pixels, checkpoint.meta.input_size)[None]
        features = extract_features(checkpoint.model, unit, checkpoint.meta.mean, checkpoint.meta.std)
        value = float(statistics.score(features)[0])
        results["scores"][name] = {"score": round(value, 4), "out_of_distribution": value > threshold}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        result = _fit_command(args) if args.command == "fit" else _score_command(args)
    except (OodError, ValueError, OSError) as exc:  # CheckpointError, DatasetError, ImageError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
