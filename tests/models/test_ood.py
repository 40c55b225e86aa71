"""models.ood: Mahalanobis out-of-distribution statistics, checked against independent computations
(scikit-learn's Ledoit–Wolf, numpy's linear algebra, a plain forward pass through the network's layers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from models.architectures import build_model
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.datasets import dataset_fingerprint, read_split
from models.metadata import ModelMetadata
from models.ood import (
    FeatureRecorder,
    OodError,
    choose_threshold,
    extract_features,
    fit_mahalanobis,
    fit_ood,
    ledoit_wolf,
    load_ood,
    main,
    save_ood,
)
from tests.models.tiny_cxr import write_tiny_dataset


def _features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)


@pytest.mark.parametrize(("n", "d"), [(200, 10), (30, 64), (5, 40)])
def test_ledoit_wolf_matches_scikit_learn(n, d):
    x = _features(n, d, seed=n + d)
    centred = x - x.mean(axis=0)
    covariance, shrinkage = ledoit_wolf(centred)
    expected_covariance, expected_shrinkage = sklearn_ledoit_wolf(centred, assume_centered=True)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-9)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=1e-9, atol=1e-12)


def test_mahalanobis_score_is_the_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(4)
    x = _features(120, 6, seed=4)
    labels = rng.integers(0, 2, 120)
    x[labels == 1] += 3.0
    statistics = fit_mahalanobis(x, labels)
    # Independently: class means, pooled within-class covariance shrunk with scikit-learn's coefficient,
    # and each distance by a linear solve (no precision matrix).
    means = [x[labels == c].mean(axis=0) for c in (0, 1)]
    residuals = np.concatenate([x[labels == c] - means[c] for c in (0, 1)])
    covariance, _ = sklearn_ledoit_wolf(residuals, assume_centered=True)
    probes = np.concatenate([x[:5], rng.normal(size=(3, 6)) * 10])
    expected = [min(math.sqrt((p - m) @ np.linalg.solve(covariance, p - m)) for m in means) for p in probes]
    np.testing.assert_allclose(statistics.score(probes), expected, rtol=1e-8)
    np.testing.assert_allclose(statistics.means, means, rtol=1e-12)


def test_threshold_passes_at_least_the_share_asked_for_and_no_more_than_needed():
    scores = np.arange(1, 401, dtype=float)[::-1]  # 400 dev scores 1..400
    threshold = choose_threshold(scores, 0.99)
    assert threshold == 396.0  # 396/400 = 0.99 at or below it; 395 would pass 0.9875
    assert (scores <= threshold).mean() >= 0.99 > (scores <= threshold - 1).mean()
    assert choose_threshold(np.array([5.0, 5.0, 5.0, 1.0]), 0.5) == 5.0
    assert choose_threshold(np.array([2.0]), 0.99) == 2.0
    with pytest.raises(OodError):
        choose_threshold(np.array([]), 0.99)


def test_constant_features_are_refused():
    with pytest.raises(OodError, match="constant"):
        fit_mahalanobis(np.ones((10, 4)), [0, 1] * 5)


# ---- the features of the very forward pass -------------------------------------------------------------


def _pooled_by_hand(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ResNet's pooled features, layer by layer (no hook)."""
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        h = model.layer4(model.layer3(model.layer2(model.layer1(h))))
        return torch.flatten(model.avgpool(h), 1)


def test_recorder_keeps_the_features_of_the_pass_on_the_callers_images_only():
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    images = torch.randn(3, 3, 64, 64)
    other = torch.randn(2, 3, 64, 64)
    with FeatureRecorder(model, images) as recorder, torch.no_grad():
        model(other)  # a perturbed input (as path methods run): ignored
        logits = model(images)
        model(images * 2)
    assert recorder.features is not None and recorder.features.shape == (3, 512)
    torch.testing.assert_close(recorder.features, _pooled_by_hand(model, images))
    torch.testing.assert_close(logits, model.fc(_pooled_by_hand(model, images)))
    assert not model._forward_hooks and not model._forward_pre_hooks and not model.avgpool._forward_hooks


def test_recorder_removes_its_hooks_when_the_forward_fails():
    model = build_model("resnet18").eval()
    images = torch.randn(1, 3, 64, 64)
    with pytest.raises(RuntimeError), FeatureRecorder(model, images):
        model(torch.randn(1, 5, 64, 64))  # wrong channel count
    assert not model._forward_hooks and not model._forward_pre_hooks and not model.avgpool._forward_hooks


def test_extract_features_equals_the_plain_pass_for_efficientnet_too():
    torch.manual_seed(1)
    model = build_model("efficientnet_b0").eval()
    unit = torch.rand(2, 64, 64)
    features = extract_features(model, unit, [0.5] * 3, [0.25] * 3, batch_size=1)
    x = ((unit[:, None].expand(-1, 3, -1, -1)) - 0.5) / 0.25
    with torch.no_grad():
        expected = torch.flatten(model.avgpool(model.features(x)), 1)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=1e-5)


# ---- fitting a checkpoint, the files, the CLI ------------------------------------------------------------


def _tiny_checkpoint(folder: Path) -> Path:
    torch.manual_seed(2)
    meta = ModelMetadata(name=folder.name, version="t", arch="resnet18", input_size=[64, 64])
    return save_checkpoint(build_model("resnet18"), meta, folder)


def test_fit_save_and_load_round_trip(tmp_path):
    folder = _tiny_checkpoint(tmp_path / "ck")
    checkpoint = load_checkpoint(folder)
    assert checkpoint.ood is None
    rng = torch.Generator().manual_seed(3)
    train, dev, test = (torch.rand(n, 64, 64, generator=rng) for n in (40, 30, 20))
    fitted = fit_ood(checkpoint.model, checkpoint.meta, train, [0, 1] * 20, dev, test, pass_rate=0.9)
    check = fitted.check
    assert check.dev_size == 30 and check.train_size == 40 and check.test_size == 20
    assert check.dev_pass_rate == pytest.approx((fitted.dev_scores <= check.threshold).mean())
    assert check.dev_pass_rate >= 0.9
    assert check.test_pass_rate == pytest.approx((fitted.test_scores <= check.threshold).mean())
    save_ood(folder, fitted.statistics, check)

    loaded = load_checkpoint(folder)
    assert loaded.meta.ood == check and loaded.ood is not None
    assert json.loads((folder / "model.json").read_text())["ood"]["file"] == "ood.safetensors"
    features = extract_features(loaded.model, dev, loaded.meta.mean, loaded.meta.std)
    # The threshold was set on the statistics as stored (float32), so the loaded ones score exactly the same.
    np.testing.assert_allclose(loaded.ood.score(features), fitted.dev_scores, rtol=1e-12)


def test_a_missing_or_broken_statistics_file_refuses_the_checkpoint(tmp_path):
    folder = _tiny_checkpoint(tmp_path / "ck")
    checkpoint = load_checkpoint(folder)
    unit = torch.rand(8, 64, 64, generator=torch.Generator().manual_seed(5))
    fitted = fit_ood(checkpoint.model, checkpoint.meta, unit, [0, 1] * 4, unit)
    save_ood(folder, fitted.statistics, fitted.check)
    (folder / "ood.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="ood.safetensors"):
        load_checkpoint(folder)
    (folder / "ood.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(folder)
    assert load_ood(folder, checkpoint.meta) is None  # a model.json without the block needs no file


def test_cli_fits_an_existing_checkpoint_and_scores_files(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data", {"train": 16, "dev": 10, "test": 8})
    folder = _tiny_checkpoint(tmp_path / "ck")
    assert main(["fit", "--model", str(folder), "--data", str(data), "--workers", "1", "--batch-size", "8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["ood"]["threshold"] == summary["threshold"] > 0
    assert meta["ood"]["train_size"] == 16 and meta["ood"]["dev_size"] == 10 and meta["ood"]["test_size"] == 8
    assert meta["ood"]["dev_pass_rate"] >= 0.99
    assert summary["test_false_unassessable"] == round((1 - meta["ood"]["test_pass_rate"]) * 8)
    assert [(d["split"], d["size"], d["fingerprint"]) for d in meta["ood"]["data"]] == [
        (split, n, dataset_fingerprint(read_split(data, split)))
        for split, n in (("train", 16), ("dev", 10), ("test", 8))
    ]

    image = sorted((data / "test").glob("*.png"))[0]
    assert main(["score", "--model", str(folder), str(image)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["threshold"] == summary["threshold"] and scored["scores"][str(image)]["score"] > 0

    assert main(["score", "--model", str(_tiny_checkpoint(tmp_path / "bare")), str(image)]) == 2
    assert "no ood block" in capsys.readouterr().err
