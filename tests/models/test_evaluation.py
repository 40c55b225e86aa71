"""The evaluation engine's pieces: smoothing, init modes, shared NormGrad pass, aggregation.

Expected values come from independent computations: scipy's Gaussian filter, the public ``explain`` call,
hand-made rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.architectures import build_model
from models.checkpoint import load_checkpoint, save_checkpoint
from models.evaluation import initialise_model, smooth_maps, summarise_rows
from models.metadata import ModelMetadata
from models.saliency import explain, list_methods


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_gaussian_smoothing_matches_scipy_with_mirror_padding(sigma):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    maps = rng.random((2, 40, 33)).astype(np.float32)
    radius = max(5, math.ceil(4 * sigma))
    expected = np.stack(
        [gaussian_filter(m.astype(np.float64), sigma, mode="mirror", truncate=radius / sigma) for m in maps]
    )
    got = smooth_maps(torch.from_numpy(maps), sigma).numpy()
    assert got.shape == maps.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(smooth_maps(torch.from_numpy(maps), 0.0).numpy(), maps)


def test_init_modes_keep_or_reinitialise_exactly_the_right_weights(tmp_path):
    torch.manual_seed(5)
    model = build_model("resnet18")
    save_checkpoint(model, ModelMetadata(name="m", version="1", arch="resnet18", input_size=[32, 32]), tmp_path)
    checkpoint = load_checkpoint(tmp_path)
    before = {k: v.clone() for k, v in checkpoint.model.state_dict().items()}
    rng_state = torch.random.get_rng_state()

    semi = initialise_model(checkpoint, "random-head", seed=1)
    with pytest.warns(FutureWarning, match="random-head"):
        semi_again = initialise_model(checkpoint, "semi-random", seed=1)  # the deprecated alias: same model
    full = initialise_model(checkpoint, "full-random", seed=1)
    full_other = initialise_model(checkpoint, "full-random", seed=2)

    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is untouched
    for k, v in checkpoint.model.state_dict().items():
        assert torch.equal(v, before[k])  # the checkpoint's own model is never modified
    semi_state, full_state = semi.state_dict(), full.state_dict()
    for k, v in before.items():
        if k.startswith("fc."):
            continue
        assert torch.equal(semi_state[k], v), k
    assert not torch.equal(semi_state["fc.weight"], before["fc.weight"])
    assert torch.equal(semi_state["fc.weight"], semi_again.state_dict()["fc.weight"])
    # He init of the head: std sqrt(2 / fan_in), zero bias.
    assert semi_state["fc.weight"].std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.1)
    assert torch.count_nonzero(semi_state["fc.bias"]) == 0
    assert not torch.equal(full_state["conv1.weight"], before["conv1.weight"])
    assert not torch.equal(full_state["conv1.weight"], full_other.state_dict()["conv1.weight"])
    assert all(not p.requires_grad for p in full.parameters()) and not full.training


def test_summary_gives_mean_std_over_repeats_and_difference_of_means():
    def rows(model, hits):
        return [
            {
                "image": f"i{k}",
                "model": model,
                "method": "gradcam",
                "label": 1,
                "probability": 0.9,
                "hit": h,
                "n_boxes": 1,
                "energy_pg": 0.5,
                "objects_hit": h,
            }
            for k, h in enumerate(hits)
        ]

    all_rows = rows("r1", [1, 1, 0, 0]) + rows("r2", [1, 1, 1, 0]) + rows("e1", [1, 0, 0, 0])
    summary = summarise_rows(
        all_rows, {"r1": "resnet34", "r2": "resnet34", "e1": "efficientnet_b0"}, {"r1": 0.5, "r2": 0.5, "e1": 0.5}
    )
    assert summary["methods"]["gradcam"]["r1"]["pointing_game"] == 0.5
    group = summary["repeated"]["gradcam"]["resnet34"]
    assert group["mean"] == pytest.approx(0.625)
    assert group["std"] == pytest.approx(np.std([0.5, 0.75], ddof=1), abs=1e-6)
    assert summary["methods"]["gradcam"]["r2"]["mean"] == pytest.approx(0.625)
    assert summary["dom"]["gradcam"] == pytest.approx(abs(0.625 - 0.25))


@pytest.mark.parametrize("combine", ["geometric-mean", "minmax-product"])
def test_engine_maps_equal_explain_method_by_method(combine):
    from models.evaluation import EvaluatedModel, EvaluationConfig, saliency_maps

    torch.manual_seed(1)
    model = build_model("resnet18").eval()
    meta = ModelMetadata(name="m", version="1", arch="resnet18", input_size=[64, 64])
    entry = EvaluatedModel(key="m", model=model, meta=meta)
    images = torch.randn(2, 3, 64, 64)
    normgrad_ids = tuple(m for m in list_methods() if m.startswith("normgrad-"))
    assert len(normgrad_ids) == 8
    methods = ("gradcam", "guided-backprop", "guided-gradcam", "input-x-grad", *normgrad_ids, "random")
    maps = saliency_maps(entry, images, methods, ["a", "b"], EvaluationConfig(methods=methods, combine=combine))
    for method_id in methods[:-1]:
        options = {"combine": combine} if method_id.startswith("normgrad-") else {}
        expected = explain(model, images, method_id, target=meta.positive_index, **options)
        torch.testing.assert_close(maps[method_id], expected, rtol=1e-5, atol=1e-7, msg=method_id)
    # The control is seeded per (model, image): the same image gives the same noise in another batch.
    again = saliency_maps(entry, images[1:], ("random",), ["b"], EvaluationConfig(methods=("random",)))
    torch.testing.assert_close(again["random"][0], maps["random"][1])
    assert not torch.equal(maps["random"][0], maps["random"][1])


def test_controls_are_evaluation_only_and_computed_from_the_image_alone():
    """Controls: accepted by the engine, not listed as saliency methods, the same for any model, equal to the
    control functions on the image resized to the grid (independently recomputed), and marked last in tables."""
    from models.controls import brightest_map, centre_map, tophat_map
    from models.evaluation import CONTROL_METHODS, EvaluatedModel, EvaluationConfig, check_methods, saliency_maps
    from models.imaging.grid import preprocess_batch, resize_unit

    assert CONTROL_METHODS == ("control-tophat", "control-brightest", "control-centre", "random")
    assert not set(CONTROL_METHODS) & set(list_methods())
    assert check_methods(list(CONTROL_METHODS)) == list(CONTROL_METHODS)

    rng = np.random.default_rng(4)
    grays = [rng.integers(0, 255, (70, 90)).astype(np.uint8) for _ in range(2)]
    meta = ModelMetadata(name="m", version="1", arch="resnet18", input_size=[48, 48], mean=[0.4] * 3, std=[0.3] * 3)
    x = preprocess_batch(grays, meta.input_size, meta.mean, meta.std)
    unit = torch.stack([resize_unit(g, meta.input_size) for g in grays])
    config = EvaluationConfig(methods=CONTROL_METHODS)
    by_model = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        entry = EvaluatedModel(key="same-key", model=build_model("resnet18").eval(), meta=meta)
        by_model.append(saliency_maps(entry, x, CONTROL_METHODS, ["a", "b"], config, unit_images=unit))
    for method_id in CONTROL_METHODS:
        torch.testing.assert_close(by_model[0][method_id], by_model[1][method_id], rtol=0, atol=0)
    torch.testing.assert_close(by_model[0]["control-tophat"], tophat_map(unit), rtol=0, atol=0)
    torch.testing.assert_close(by_model[0]["control-brightest"], unit, rtol=0, atol=0)
    torch.testing.assert_close(by_model[0]["control-centre"], centre_map(unit), rtol=0, atol=0)
    # Without the unit images the engine undoes the normalisation: the same maps up to float rounding.
    undone = saliency_maps(entry, x, ("control-brightest",), ["a", "b"], config)
    torch.testing.assert_close(undone["control-brightest"], brightest_map(unit), rtol=0, atol=1e-6)


def test_tolerance_is_a_fraction_of_the_grid_side_and_tau_px_scales_with_the_grid():
    from models.evaluation import EvaluationConfig, EvaluationError
    from models.metadata import CHEST_TAU_REL

    small = ModelMetadata(name="m", version="1", arch="resnet18", input_size=[64, 64])
    large = ModelMetadata(name="m", version="1", arch="resnet18", input_size=[256, 256])
    wide = ModelMetadata(name="m", version="1", arch="resnet18", input_size=[200, 320], tau_rel=0.1)
    relative = EvaluationConfig(methods=("gradcam",), tau_rel=0.05)
    assert relative.tolerance_for(small) == pytest.approx((0.05, 3.2))
    assert relative.tolerance_for(large) == pytest.approx((0.05, 12.8))
    assert relative.tolerance_for(wide) == pytest.approx((0.05, 10.0))  # the shorter side
    default = EvaluationConfig(methods=("gradcam",))  # neither: the model's own tau_rel
    assert pytest.approx(15 / 600) == CHEST_TAU_REL
    assert default.tolerance_for(large) == pytest.approx((15 / 600, 256 * 15 / 600))
    assert default.tolerance_for(wide) == pytest.approx((0.1, 20.0))
    pixels = EvaluationConfig(methods=("gradcam",), tau=16.0)
    assert pixels.tolerance_for(large) == pytest.approx((16 / 256, 16.0))
    with pytest.raises(EvaluationError, match="not both"):
        EvaluationConfig(methods=("gradcam",), tau=3.0, tau_rel=0.05)
    with pytest.raises(EvaluationError, match="tau_rel"):
        EvaluationConfig(methods=("gradcam",), tau_rel=0.0)


def test_pretrained_backbone_takes_the_pretext_weights_and_a_fresh_seeded_head(tmp_path):
    """A tiny pretext run writes its folder; pretrained-backbone = its backbone (every tensor) + a He head."""
    from PIL import Image

    from models.evaluation import load_models
    from models.pretext import load_pretext_backbone
    from models.pretext import main as pretext_main

    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        ramp = np.linspace(40, 200, 48)[:, None] + rng.normal(0, 10, (48, 40))  # bright at the bottom: orientable
        Image.fromarray(np.clip(ramp, 0, 255).astype(np.uint8)).save(data / f"i{i:02d}.png")
    out = pretext_main(
        ["--data", str(tmp_path / "data"), "--input-size", "32", "--epochs", "1", "--out", str(tmp_path / "p")]
    )
    arch, state = load_pretext_backbone(out)
    assert arch == "resnet18" and state["fc.weight"].shape == (4, 512)

    torch.manual_seed(5)
    save_checkpoint(
        build_model("resnet18"),
        ModelMetadata(name="m", version="1", arch="resnet18", input_size=[32, 32]),
        tmp_path / "c",
    )
    first, second = load_models([tmp_path / "c"], init="pretrained-backbone", repeat=2, pretext=out)
    trained = load_checkpoint(tmp_path / "c").model.state_dict()
    for key, value in first.model.state_dict().items():
        if key.startswith("fc."):
            continue
        assert torch.equal(value, state[key]), key
        assert torch.equal(value, second.model.state_dict()[key]), key
    head = first.model.state_dict()["fc.weight"]
    assert head.shape == (2, 512) and not torch.equal(head, trained["fc.weight"])
    assert not torch.equal(head, second.model.state_dict()["fc.weight"])  # each repeat its own head
    assert torch.count_nonzero(first.model.state_dict()["fc.bias"]) == 0
    assert first.init == "pretrained-backbone" and first.seed != second.seed
    with pytest.raises(ValueError, match="pretext"):
        load_models([tmp_path / "c"], init="pretrained-backbone")
    # One pretext folder per architecture: a checkpoint never takes another architecture's backbone.
    save_checkpoint(
        build_model("resnet34"),
        ModelMetadata(name="m", version="1", arch="resnet34", input_size=[32, 32]),
        tmp_path / "r34",
    )
    with pytest.raises(ValueError, match="no pretext backbone of that architecture"):
        load_models([tmp_path / "c", tmp_path / "r34"], init="pretrained-backbone", pretext=[out])
    with pytest.raises(ValueError, match="two pretext folders for resnet18"):
        load_models([tmp_path / "c"], init="pretrained-backbone", pretext=[out, out])
