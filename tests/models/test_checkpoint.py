"""Checkpoint folders (docs/formats.md): round trips, every refusal with a clear message, and the .pth converter."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from models.architectures import build_model, default_normgrad_layers
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.convert import convert, infer_arch_from_state, load_backbone, read_state_dict
from models.convert import main as convert_main
from models.metadata import ModelMetadata


def _meta(arch: str = "resnet18", **kw) -> ModelMetadata:
    return ModelMetadata(name="t", version="0", arch=arch, input_size=[64, 64], **kw)


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_model("resnet18").eval()
    # Non-trivial BatchNorm statistics, so that buffers are part of what must survive the round trip.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


class _Marker:
    """Unpickling this object would create a file: proof that a loader did (or did not) run pickle code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_round_trip_float32_is_exact(tmp_path, resnet18, batch):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    ck = load_checkpoint(folder)
    original = resnet18.state_dict()
    loaded = ck.model.state_dict()
    assert set(original) == set(loaded)
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert not ck.model.training
    assert not any(p.requires_grad for p in ck.model.parameters())
    with torch.no_grad():
        assert torch.equal(resnet18(batch), ck.model(batch))
    assert ck.meta.arch == "resnet18" and ck.meta.input_size == [64, 64]
    assert ck.meta.normgrad_layers == ["layer2.0", "layer3.0", "layer4.0", "layer4.1"]
    assert json.loads((folder / "model.json").read_text())["classes"] == ["no_foreign_object", "foreign_object"]


def test_round_trip_float16_halves_size_and_rounds_weights(tmp_path, resnet18, batch):
    f32 = save_checkpoint(resnet18, _meta(), tmp_path / "f32")
    f16 = save_checkpoint(resnet18, _meta(), tmp_path / "f16", dtype=torch.float16)
    raw = load_file(str(f16 / "model.safetensors"))
    assert raw["conv1.weight"].dtype == torch.float16
    assert raw["bn1.num_batches_tracked"].dtype == torch.int64  # integers are not converted
    size32 = (f32 / "model.safetensors").stat().st_size
    size16 = (f16 / "model.safetensors").stat().st_size
    assert 0.49 < size16 / size32 < 0.51
    ck = load_checkpoint(f16)
    for k, v in resnet18.state_dict().items():
        expected = v.half().float() if v.is_floating_point() else v
        assert torch.equal(ck.model.state_dict()[k], expected), k
    with torch.no_grad():
        ref, got = resnet18(batch), ck.model(batch)
    assert torch.allclose(ref, got, atol=2e-2 * ref.abs().max().item())


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "nowhere")


def test_missing_model_json(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    (folder / "model.json").unlink()
    with pytest.raises(CheckpointError, match=r"model\.json: no such file"):
        load_checkpoint(folder)


def test_missing_weights(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: no such file"):
        load_checkpoint(folder)


def test_corrupt_json(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    (folder / "model.json").write_text('{"name": "t", "arch": ')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)


def test_json_missing_required_field(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    data = json.loads((folder / "model.json").read_text())
    del data["arch"]
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"model\.json: field arch: missing required field$"):
        load_checkpoint(folder)


def test_corrupt_safetensors(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + bytes(100))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(folder)


def test_truncated_safetensors(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(folder)


def test_pickle_named_safetensors_is_never_unpickled(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    marker = tmp_path / "unpickled.txt"
    with open(folder / "model.safetensors", "wb") as fh:
        pickle.dump({"conv1.weight": _Marker(marker)}, fh)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_weights_of_another_arch(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    data = json.loads((folder / "model.json").read_text())
    data["arch"] = "resnet34"
    data["normgrad_layers"] = default_normgrad_layers("resnet34")
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"do not match arch 'resnet34' \(missing \d+ e\.g\. \['layer1\.2"):
        load_checkpoint(folder)


def test_unknown_arch(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    data = json.loads((folder / "model.json").read_text())
    data["arch"] = "vgg16"
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="unknown arch 'vgg16'"):
        load_checkpoint(folder)


def test_shape_mismatch(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    state = load_file(str(folder / "model.safetensors"))
    state["fc.weight"] = torch.zeros(3, 512)
    state["fc.bias"] = torch.zeros(3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"fc\.\w+ has shape \(3.*\), resnet18 expects \(2"):
        load_checkpoint(folder)


def test_unknown_normgrad_layer(tmp_path, resnet18):
    folder = save_checkpoint(resnet18, _meta(normgrad_layers=["layer2.0", "layer9.0"]), tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"normgrad_layers not in resnet18: \['layer9\.0'\]"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"positive_class": "pneumonia"},
            r"field \(the object\): Value error, positive_class 'pneumonia' is not one of",
        ),
        ({"threshold": 1.5}, r"field threshold: Input should be less than or equal to 1$"),
        ({"threshhold": 0.7}, r"field threshhold: unknown field"),
        ({"trained_on": "a sentence"}, r"field trained_on: Input should be a valid dictionary"),
        ({"trained_on": {"commands": ["train --data /data/cxr"]}}, r"field trained_on\.commands: .*absolute path"),
        ({"input_size": [16, 16]}, r"field input_size: .*32\.\.4096"),
    ],
)
def test_bad_metadata_is_refused_with_one_line_naming_file_and_field(tmp_path, resnet18, change, message):
    folder = save_checkpoint(resnet18, _meta(), tmp_path / "ck")
    data = {**json.loads((folder / "model.json").read_text()), **change}
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(folder)
    text = str(caught.value)
    assert text.startswith(str(folder / "model.json") + ": field ") and "\n" not in text


def test_metadata_is_validated_when_built_in_code_too():
    with pytest.raises(ValidationError, match="positive_class 'pneumonia' is not one of"):
        _meta(positive_class="pneumonia")


# ---------------------------------------------------------------------------------------------- converter


def test_convert_pth_state_dict_gives_equal_outputs(tmp_path, resnet18, batch):
    pth = tmp_path / "trained.pth"
    torch.save(resnet18.state_dict(), pth)
    folder = convert(pth, tmp_path / "ck", arch="resnet18", name="mine", input_size=64)
    ck = load_checkpoint(folder)
    with torch.no_grad():
        assert torch.equal(resnet18(batch), ck.model(batch))
    assert ck.meta.name == "mine" and ck.meta.arch == "resnet18" and ck.meta.input_size == [64, 64]
    assert ck.meta.mean == [0.485, 0.456, 0.406]  # ImageNet statistics by default for torchvision weights


def test_convert_cli_infers_arch_and_strips_dataparallel_prefix(tmp_path, resnet18, batch, capsys):
    pth = tmp_path / "dp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18.state_dict().items()}}, pth)
    assert infer_arch_from_state(read_state_dict(pth)) == "resnet18"
    rc = convert_main(
        [
            "--weights",
            str(pth),
            "--out",
            str(tmp_path / "ck"),
            "--input-size",
            "64",
            "--fp16-weights",
            "--mean",
            "0.5",
            "--std",
            "0.25",
        ]
    )
    assert rc == 0 and "wrote" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.meta.arch == "resnet18" and ck.meta.mean == [0.5, 0.5, 0.5]
    assert load_file(str(tmp_path / "ck" / "model.safetensors"))["fc.weight"].dtype == torch.float16
    with torch.no_grad():
        ref = resnet18(batch)
        assert torch.allclose(ref, ck.model(batch), atol=2e-2 * ref.abs().max().item())


def test_convert_safetensors_input(tmp_path, resnet18, batch):
    src = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18.state_dict().items()}, str(src))
    ck = load_checkpoint(convert(src, tmp_path / "ck", input_size=64))
    with torch.no_grad():
        assert torch.equal(resnet18(batch), ck.model(batch))


def test_pth_with_arbitrary_objects_is_refused_by_weights_only(tmp_path):
    marker = tmp_path / "unpickled.txt"
    pth = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Marker(marker)}, pth)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        read_state_dict(pth)
    assert not marker.exists()
    rc = convert_main(["--weights", str(pth), "--out", str(tmp_path / "ck")])
    assert rc == 2 and not (tmp_path / "ck").exists() and not marker.exists()


def test_whole_pickled_model_is_refused(tmp_path, resnet18):
    pth = tmp_path / "whole.pth"
    torch.save(resnet18, pth)
    with pytest.raises(CheckpointError, match="refused to unpickle.*state_dict"):
        read_state_dict(pth)


def test_convert_refuses_imagenet_head_and_wrong_arch(tmp_path, resnet18):
    imagenet = build_model("resnet18", num_classes=1000)
    pth = tmp_path / "imagenet.pth"
    torch.save(imagenet.state_dict(), pth)
    with pytest.raises(CheckpointError, match="head has 1000 outputs.*--pretrained"):
        convert(pth, tmp_path / "ck", arch="resnet18")
    two_class = tmp_path / "r18.pth"
    torch.save(resnet18.state_dict(), two_class)
    with pytest.raises(CheckpointError, match="do not match arch 'resnet34'"):
        convert(two_class, tmp_path / "ck2", arch="resnet34")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")


def test_load_backbone_drops_imagenet_head(resnet18):
    imagenet = build_model("resnet18", num_classes=1000)
    target = build_model("resnet18")
    head_before = target.fc.weight.clone()
    load_backbone(target, imagenet.state_dict(), "imagenet.pth", "resnet18")
    src = imagenet.state_dict()
    for k, v in target.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, src[k]), k
    assert torch.equal(target.fc.weight, head_before) and target.fc.out_features == 2
    with pytest.raises(CheckpointError, match="tensor conv1.weight has shape"):
        bad = dict(src)
        bad["conv1.weight"] = torch.zeros(64, 1, 7, 7)
        load_backbone(target, bad, "bad.pth", "resnet18")
