"""models.train on a tiny data set written by the test (resnet18 at 64 px, a dozen images, 1–2 epochs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

import models.train as train_mod
from models.architectures import build_model
from models.checkpoint import load_checkpoint
from models.datasets import dataset_fingerprint, load_gray, read_split
from models.imaging.grid import preprocess_batch
from models.train import TrainError, augment, main, task_tau_rel
from tests.models.tiny_cxr import write_tiny_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), {"train": 12, "dev": 6, "test": 8})


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data",
        str(data),
        "--out",
        str(out),
        "--arch",
        "resnet18",
        "--input-size",
        "64",
        "--batch-size",
        "4",
        "--seed",
        "7",
        "--workers",
        "1",
        *extra,
    ]


def _independent_probs(model: torch.nn.Module, meta, samples) -> np.ndarray:
    """P(foreign_object) through the service's preprocessing path, one image at a time."""
    probs = []
    with torch.no_grad():
        for s in samples:
            x = preprocess_batch([load_gray(s.image_path)], meta.input_size, meta.mean, meta.std)
            probs.append(torch.softmax(model(x), dim=1)[0, meta.positive_index].item())
    return np.array(probs)


def test_one_epoch_writes_a_loadable_checkpoint_matching_the_trained_model(tiny, tmp_path):
    out = tmp_path / "ck"
    result = main(_args(tiny, out, "--epochs", "1", "--name", "tiny", "--version", "0.1"))
    ck = load_checkpoint(out)

    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(result.model(x), ck.model(x), atol=1e-5)

    meta = json.loads((out / "model.json").read_text())
    assert meta["name"] == "tiny" and meta["version"] == "0.1" and meta["arch"] == "resnet18"
    assert meta["input_size"] == [64, 64]
    assert meta["classes"] == ["no_foreign_object", "foreign_object"]
    assert meta["positive_class"] == "foreign_object" and meta["threshold"] == 0.5
    assert meta["normgrad_layers"] == ["layer2.0", "layer3.0", "layer4.0", "layer4.1"]
    assert meta["tau_rel"] == pytest.approx(15 / 600)  # a chest data set: the papers' 15 px at 600
    trained_on = meta["trained_on"]
    by_split = {d["split"]: d for d in trained_on["data"]}
    assert by_split["train"]["fingerprint"] == dataset_fingerprint(read_split(tiny, "train"))
    assert {k: d["size"] for k, d in by_split.items()} == {"train": 12, "dev": 6, "test": 8}
    assert [len(trained_on["commands"]), trained_on["commands"][0][:30]] == [1, "python -m models.train --data "]
    assert "--epochs 1" in trained_on["commands"][0]
    # No absolute path of the training machine anywhere in the file (the data were given as absolute paths).
    assert str(tiny.parent) not in (out / "model.json").read_text()

    # The recorded metrics are those of the saved checkpoint, recomputed here independently.
    for split in ("dev", "test"):
        samples = read_split(tiny, split)
        labels = np.array([s.label for s in samples])
        probs = _independent_probs(ck.model, ck.meta, samples)
        m = meta["metrics"][split]
        assert m["n"] == len(samples) and m["n_positive"] == int(labels.sum())
        assert m["accuracy"] == pytest.approx(float(((probs >= 0.5) == labels).mean()))
        assert m["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-6)

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["epoch"] == 1 and log[0]["lr"] == 0.005
    assert set(log[0]) >= {"loss", "train_accuracy", "dev_accuracy", "dev_auc", "seconds"}
    assert (out / "state" / "last.safetensors").is_file() and (out / "state" / "last.json").is_file()

    # The out-of-distribution statistics of the shipped weights (models.ood): fitted on train, threshold on dev.
    assert ck.ood is not None and ck.meta.ood is not None
    assert (ck.meta.ood.train_size, ck.meta.ood.dev_size, ck.meta.ood.test_size) == (12, 6, 8)
    assert ck.meta.ood.dev_pass_rate >= 0.99 and ck.meta.ood.data == ck.meta.trained_on.data


def test_resume_after_one_epoch_equals_an_uninterrupted_two_epoch_run(tiny, tmp_path):
    # lr-step 1 makes the scheduler's state matter: epoch 2 must run at lr/10 after the resume too.
    interrupted, straight = tmp_path / "a", tmp_path / "b"
    main(_args(tiny, interrupted, "--epochs", "1", "--lr-step", "1"))
    main(_args(tiny, interrupted, "--epochs", "2", "--lr-step", "1", "--resume"))
    main(_args(tiny, straight, "--epochs", "2", "--lr-step", "1"))

    a = load_file(str(interrupted / "state" / "last.safetensors"))
    b = load_file(str(straight / "state" / "last.safetensors"))
    assert set(a) == set(b)
    assert any(k.startswith("optimizer.") and k.endswith("momentum_buffer") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = [json.loads(line) for line in (interrupted / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in log_a] == [e["lr"] for e in log_b] == [0.005, 0.0005]
    assert [e["loss"] for e in log_a] == [e["loss"] for e in log_b]
    meta_a = json.loads((interrupted / "model.json").read_text())
    assert len(meta_a["trained_on"]["commands"]) == 2  # the first command and the resume


def test_resume_refuses_other_settings_and_fresh_run_refuses_used_folder(tiny, tmp_path):
    out = tmp_path / "ck"
    main(_args(tiny, out, "--epochs", "1"))
    with pytest.raises(TrainError, match="settings differ.*'lr'"):
        main(_args(tiny, out, "--epochs", "2", "--lr", "0.1", "--resume"))
    with pytest.raises(TrainError, match="already holds a training run"):
        main(_args(tiny, out, "--epochs", "1"))
    with pytest.raises(TrainError, match="no saved state"):
        main(_args(tiny, tmp_path / "fresh", "--epochs", "1", "--resume"))


def test_pretrained_backbone_fp16_weights_clean_state_and_separate_test_data(tiny, tmp_path):
    imagenet = build_model("resnet18", num_classes=1000)
    pth = tmp_path / "imagenet.pth"
    torch.save(imagenet.state_dict(), pth)
    heldout = write_tiny_dataset(tmp_path / "heldout", {"test": 6}, seed=3)  # another seed's test split
    out = tmp_path / "ck"
    main(
        _args(
            tiny,
            out,
            "--epochs",
            "1",
            "--lr",
            "1e-9",
            "--pretrained",
            str(pth),
            "--fp16-weights",
            "--clean-state",
            "--test-data",
            str(heldout),
        )
    )
    raw = load_file(str(out / "model.safetensors"))
    assert raw["conv1.weight"].dtype == torch.float16
    # lr ≈ 0: the stored backbone is the user's weights (rounded to fp16); the head is new and 2-class.
    assert torch.allclose(raw["conv1.weight"].float(), imagenet.conv1.weight.detach().float(), rtol=2e-3, atol=1e-6)
    assert raw["fc.weight"].shape == (2, 512)
    meta = json.loads((out / "model.json").read_text())
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["trained_on"]["pretrained"] == "imagenet.pth"
    test_record = next(d for d in meta["trained_on"]["data"] if d["split"] == "test")
    assert test_record["size"] == 6 and meta["metrics"]["test"]["n"] == 6
    assert test_record["fingerprint"] == dataset_fingerprint(read_split(heldout, "test"))
    assert not (out / "state").exists()
    load_checkpoint(out)


def test_recorded_tolerance_is_the_tasks_unless_given(tmp_path):
    chest, cardiac = tmp_path / "chest", tmp_path / "cardiac"
    chest.mkdir()
    cardiac.mkdir()
    (cardiac / "synth.json").write_text(json.dumps({"generator": "models.synth.cmr", "seed": 0}))
    (chest / "synth.json").write_text(json.dumps({"generator": "models.synth", "style": "v2"}))
    assert task_tau_rel(cardiac) == pytest.approx(15 / 224)  # the 2023 paper's 15 px at 224
    assert task_tau_rel(chest) == pytest.approx(0.025)
    assert task_tau_rel(tmp_path) == pytest.approx(0.025)  # no synth.json: a chest set such as Object-CXR
    assert task_tau_rel(cardiac, 0.05) == 0.05
    with pytest.raises(TrainError, match="tau-rel"):
        task_tau_rel(chest, 1.5)


def test_missing_dev_split_is_a_clear_error(tiny, tmp_path):
    data = tmp_path / "nodev"
    write_tiny_dataset(data, {"train": 4})
    with pytest.raises(TrainError, match="missing dev.csv"):
        main(_args(data, tmp_path / "ck", "--epochs", "1"))


def test_cli_reports_errors_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "models.train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "ck")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: --data" in proc.stderr and "no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_augment_without_strength_is_identity_or_flip(monkeypatch):
    for name in ("BRIGHTNESS", "CONTRAST", "ROTATION_DEG", "TRANSLATE", "SCALE"):
        monkeypatch.setattr(train_mod, name, 0.0)
    x = torch.rand(16, 24, 40, generator=torch.Generator().manual_seed(0))
    y = augment(x.clone(), torch.Generator().manual_seed(1))
    flips = 0
    for a, b in zip(x, y):
        if torch.allclose(a, b, atol=1e-5):
            continue
        assert torch.allclose(a.flip(-1), b, atol=1e-5)
        flips += 1
    assert 0 < flips < 16


def test_augment_translation_moves_a_dot_by_the_drawn_offset(monkeypatch):
    for name in ("BRIGHTNESS", "CONTRAST", "ROTATION_DEG", "SCALE"):
        monkeypatch.setattr(train_mod, name, 0.0)
    monkeypatch.setattr(train_mod, "TRANSLATE", 0.25)
    x = torch.zeros(8, 64, 64)
    x[:, 32, 20] = 1.0
    y = augment(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the draws augment made, in its order
    flip = torch.rand(8, generator=g) < 0.5
    for _ in range(2):  # angle, scale
        torch.rand(8, generator=g)
    tx = -0.25 + 0.5 * torch.rand(8, generator=g)
    ty = -0.25 + 0.5 * torch.rand(8, generator=g)
    for i in range(8):
        # affine_grid samples the input at A·p + t (normalised coordinates, A = ±identity): the dot lands at
        # p = A⁻¹(q − t), where q is its input position.
        sign = -1.0 if flip[i] else 1.0
        qx, qy = (20 + 0.5) / 32 - 1, (32 + 0.5) / 32 - 1
        px, py = sign * (qx - 2 * tx[i].item()), qy - 2 * ty[i].item()
        exp_x, exp_y = (px + 1) * 32 - 0.5, (py + 1) * 32 - 0.5
        mass = y[i].sum()
        cy = (y[i].sum(1) * torch.arange(64)).sum() / mass
        cx = (y[i].sum(0) * torch.arange(64)).sum() / mass
        assert abs(cx.item() - exp_x) < 0.6 and abs(cy.item() - exp_y) < 0.6
    assert y.min() >= 0 and y.max() <= 1


def test_application_flags_name_classes_serves_tau_and_results(tiny, tmp_path):
    """A second application: its own class names (positive first in the output, to check the label mapping),
    a serves block, its Pointing Game tolerance and result series, all in model.json."""
    out = tmp_path / "ck"
    result = main(
        _args(
            tiny,
            out,
            "--epochs",
            "1",
            "--classes",
            "lvot",
            "no_lvot",
            "--positive-class",
            "lvot",
            "--serves-modality",
            "MR",
            "--serves-body-part",
            "HEART",
            "--serves-series-description",
            ".*4ch.*",
            "--tau-rel",
            str(15 / 224),
            "--results-series-number",
            "9100",
            "--results-series-description",
            "NormGate LVOT",
            "--notes",
            "tiny data",
        )
    )
    ck = load_checkpoint(out)
    meta = ck.meta
    assert meta.classes == ["lvot", "no_lvot"] and meta.positive_class == "lvot" and meta.positive_index == 0
    assert meta.serves is not None and (meta.serves.modality, meta.serves.body_part_examined) == ("MR", "HEART")
    assert meta.serves.series_description == ".*4ch.*" and meta.serves.view_position is None
    assert meta.tau_rel == pytest.approx(15 / 224)
    assert meta.results is not None and (meta.results.series_number, meta.results.series_description) == (
        9100,
        "NormGate LVOT",
    )
    assert meta.trained_on.notes == "tiny data"
    # Label 1 (annotated) was trained towards output 0: the recorded AUC is of P(lvot) = softmax[:, 0].
    samples = read_split(tiny, "test")
    labels = np.array([s.label for s in samples])
    probs = _independent_probs(ck.model, meta, samples)
    assert meta.metrics["test"]["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-6)
    assert result.meta.to_dict() == json.loads((out / "model.json").read_text())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "a", "a"], "classes"),
        (["--positive-class", "lvot"], "positive_class 'lvot' is not one of"),
        (["--serves-body-part", "HEART"], "needs --serves-modality"),
        (["--serves-modality", "MR("], "not a regular expression"),
        (["--results-series-number", "9100"], "go together"),
        (["--tau-rel", "0"], "tau_rel"),
    ],
)
def test_application_flags_are_checked_before_training(tiny, tmp_path, extra, message):
    with pytest.raises(TrainError, match=message):
        main(_args(tiny, tmp_path / "ck", "--epochs", "1", *extra))
    assert not (tmp_path / "ck").exists()
