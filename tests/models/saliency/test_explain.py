"""The explain() contract: every method, batch invariance, safety (hooks, flags, outputs), errors, devices."""

import threading

import pytest
import torch
from torch import nn

from models.architectures import build_model
from models.saliency import explain, list_methods, register_method
from models.saliency.registry import LAYERS_NONE

from .conftest import pearson

METHOD_IDS = [f"normgrad-{k}-{s}" for k in ("bias", "scaling", "conv1x1", "conv3x3") for s in ("single", "combined")]
METHOD_IDS += [
    "gradcam",
    "guided-gradcam",
    "guided-backprop",
    "input-x-grad",
    "gradient",
    "smoothgrad",
    "integrated-gradients",
    "guided-ig",
    "blur-ig",
    "xrai",
]
# Fewer steps/samples for the iterative methods: tests stay within the CPU budget.
FAST_OPTIONS = {
    "smoothgrad": {"samples": 4},
    "integrated-gradients": {"steps": 6},
    "guided-ig": {"steps": 4},
    "blur-ig": {"steps": 6},
    "xrai": {"steps": 6},
}


@pytest.fixture(scope="module")
def small_images():
    torch.manual_seed(2)
    return torch.randn(2, 3, 40, 40)


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


def test_list_methods_is_the_documented_set():
    assert list_methods() == METHOD_IDS


@pytest.mark.parametrize("method", METHOD_IDS)
def test_every_method_returns_finite_non_negative_maps(resnet18, small_images, method):
    maps = explain(resnet18, small_images, method, **FAST_OPTIONS.get(method, {}))
    assert maps.shape == (2, 40, 40)
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert (maps >= 0).all()
    assert float(maps.max()) > 0


@pytest.mark.parametrize("method", METHOD_IDS)
def test_batch_equals_one_image_at_a_time(resnet18, small_images, method):
    options = FAST_OPTIONS.get(method, {})
    target = torch.tensor([1, 0])
    batched = explain(resnet18, small_images, method, target=target, **options)
    for i in range(small_images.shape[0]):
        alone = explain(resnet18, small_images[i : i + 1], method, target=int(target[i]), **options)[0]
        scale = float(alone.abs().max())
        torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5 * scale)


def test_model_outputs_weights_and_flags_unchanged(small_images):
    torch.manual_seed(0)
    model = build_model("resnet18")
    model.train()  # batch-norm statistics would move if the explanation ran in training mode
    model.layer1.eval()
    model.fc.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    training = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        before = model(small_images)
    model.train()
    model.layer1.eval()
    hooks = _hook_count(model)
    for method in ("normgrad-conv3x3-combined", "gradcam", "guided-gradcam", "smoothgrad"):
        explain(model, small_images, method, **FAST_OPTIONS.get(method, {}))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert _hook_count(model) == hooks
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(small_images), before, rtol=0, atol=0)


class _FailingBlock(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside the model")


@pytest.mark.parametrize("method", ["normgrad-conv1x1-combined", "gradcam", "guided-backprop", "guided-gradcam"])
def test_hooks_and_flags_restored_after_model_raises(method):
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    model.layer4[1].relu = nn.Sequential(_FailingBlock())  # fails after the hooked layers ran
    model.layer3.train()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, torch.randn(1, 3, 32, 32), method, layers=["layer3.0", "layer4.0"])
    assert _hook_count(model) == 0
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.layer3.training and not model.layer4.training


def test_hooks_removed_after_bad_target(resnet18, small_images):
    with pytest.raises(ValueError, match="out of range"):
        explain(resnet18, small_images, target=5)
    assert _hook_count(resnet18) == 0
    assert all(p.requires_grad for p in resnet18.parameters())


def test_backward_stops_at_earliest_hooked_layer(small_images):
    """Nothing below layer2.0 is part of the autograd graph, and no weight gets a gradient."""
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.requires_grad

        return hook

    handles = [
        model.layer1.register_forward_hook(record("layer1")),
        model.layer2[1].register_forward_hook(record("layer2.1")),
        model.conv1.register_forward_hook(record("conv1")),
    ]
    try:
        explain(model, small_images)
    finally:
        for h in handles:
            h.remove()
    assert seen == {"conv1": False, "layer1": False, "layer2.1": True}
    assert all(p.grad is None for p in model.parameters())


def test_target_forms(resnet18, small_images):
    predicted = resnet18(small_images).argmax(1)
    default = explain(resnet18, small_images, "gradient")
    torch.testing.assert_close(default, explain(resnet18, small_images, "gradient", target=predicted))
    as_int = explain(resnet18, small_images, "gradient", target=0)
    torch.testing.assert_close(as_int, explain(resnet18, small_images, "gradient", target=torch.tensor([0, 0])))
    assert not torch.allclose(explain(resnet18, small_images, "gradient", target=1), as_int)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "nope"}, ValueError, "unknown saliency method"),
        ({"layers": ["layer9.0"]}, ValueError, "unknown layer"),
        ({"layers": []}, ValueError, "non-empty"),
        ({"target": torch.tensor([0, 1, 1])}, ValueError, "shape"),
        ({"target": torch.tensor([0.5, 1.0])}, TypeError, "integer"),
        ({"target": -1}, ValueError, "out of range"),
        ({"combine": "sum"}, ValueError, "combine"),
        ({"method": "gradient", "steps": 3}, ValueError, "does not take"),
        ({"method": "integrated-gradients", "steps": 1}, ValueError, "steps"),
        ({"method": "smoothgrad", "samples": 0}, ValueError, "samples"),
    ],
)
def test_bad_arguments_give_clear_errors(resnet18, small_images, kwargs, error, match):
    with pytest.raises(error, match=match):
        explain(resnet18, small_images, **kwargs)


@pytest.mark.parametrize(
    "images, error, match",
    [
        (torch.randn(3, 32, 32), ValueError, "shape"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "float"),
        (torch.full((1, 3, 32, 32), float("nan")), ValueError, "NaN"),
        (torch.zeros(0, 3, 32, 32), ValueError, "non-empty"),
        ([[0.0]], TypeError, "Tensor"),
    ],
)
def test_bad_images_give_clear_errors(resnet18, images, error, match):
    with pytest.raises(error, match=match):
        explain(resnet18, images)


def test_unknown_architecture_needs_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    image = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="pass layers"):
        explain(model, image)
    assert explain(model, image, layers=["1"]).shape == (1, 16, 16)
    with pytest.raises(TypeError, match=r"\[B, C, H, W\]"):
        explain(model, image, layers=["4"])  # the head's output is not a feature map


def test_layer_followed_by_in_place_relu_is_read_before_the_relu(resnet18_not_inplace, resnet18):
    """bn1's output is overwritten by the in-place ReLU that follows; NormGrad must see the pre-ReLU values."""
    torch.manual_seed(4)
    image = torch.randn(1, 3, 32, 32)
    block = resnet18_not_inplace.layer2[0]
    stem = resnet18_not_inplace
    h = stem.layer1(stem.maxpool(stem.relu(stem.bn1(stem.conv1(image)))))
    pre_relu = block.bn1(block.conv1(h))
    pre_relu.retain_grad()
    out = block.relu(pre_relu)
    out = block.bn2(block.conv2(out)) + block.downsample(h)
    h = stem.layer4(stem.layer3(stem.layer2[1](block.relu(out))))
    stem.fc(torch.flatten(stem.avgpool(h), 1))[0, 1].backward()
    expected = (pre_relu.grad.norm(dim=1) * pre_relu.norm(dim=1)).detach()
    expected = torch.nn.functional.interpolate(expected[:, None], size=(32, 32), mode="bilinear")[:, 0]
    ours = explain(resnet18, image, "normgrad-conv1x1-single", target=1, layers=["layer2.0.bn1"])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-7)
    assert _hook_count(resnet18) == 0


def test_channels_last_gives_the_same_maps(resnet18, small_images):
    model = build_model("resnet18")
    model.load_state_dict(resnet18.state_dict())
    model = model.eval().to(memory_format=torch.channels_last)
    images = small_images.contiguous(memory_format=torch.channels_last)
    for method in ("normgrad-conv3x3-combined", "gradcam", "input-x-grad"):
        torch.testing.assert_close(
            explain(model, images, method), explain(resnet18, small_images, method), rtol=1e-4, atol=1e-6
        )


def test_cpu_autocast_bfloat16_stays_close_to_float32(resnet18, small_images):
    full = explain(resnet18, small_images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = explain(resnet18, small_images)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    for i in range(2):
        assert pearson(low[i], full[i]) > 0.95


def test_float16_autocast_keeps_gradient_scale(resnet18, small_images):
    """The float16 loss scale is undone: maps keep the float32 magnitude, not 1024 times it."""
    full = explain(resnet18, small_images, "normgrad-conv1x1-combined")
    with torch.autocast("cpu", dtype=torch.float16):
        half = explain(resnet18, small_images, "normgrad-conv1x1-combined")
    for i in range(2):
        assert pearson(half[i], full[i]) > 0.99
    assert float(half.max() / full.max()) == pytest.approx(1.0, rel=0.05)


def test_concurrent_threads_get_their_own_results(resnet18, small_images):
    expected = [explain(resnet18, small_images[i : i + 1], "normgrad-conv1x1-combined") for i in range(2)]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                results[i] = explain(resnet18, small_images[i : i + 1], "normgrad-conv1x1-combined")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        torch.testing.assert_close(results[i], expected[i])
    assert _hook_count(resnet18) == 0


def test_efficientnet_b0_defaults(small_images):
    torch.manual_seed(0)
    model = build_model("efficientnet_b0").eval()
    for method in ("normgrad-conv1x1-combined", "normgrad-scaling-single", "gradcam", "guided-backprop"):
        maps = explain(model, small_images[:1], method)
        assert maps.shape == (1, 40, 40) and torch.isfinite(maps).all() and (maps >= 0).all()


def test_register_method_extends_the_registry(resnet18, small_images):
    def constant_map(model, images, target):
        return torch.ones(images.shape[0], *images.shape[-2:])

    register_method("test-constant", constant_map, LAYERS_NONE, "test only")
    try:
        assert "test-constant" in list_methods()
        assert explain(resnet18, small_images, "test-constant").sum() == 2 * 40 * 40
        with pytest.raises(ValueError, match="already registered"):
            register_method("test-constant", constant_map, LAYERS_NONE, "again")
    finally:
        from models.saliency import registry

        registry._REGISTRY.pop("test-constant")


@pytest.mark.parametrize("method", ["normgrad-conv1x1-combined", "gradcam", "input-x-grad", "integrated-gradients"])
def test_explain_with_logits_reuses_the_forward_pass(resnet18, small_images, method):
    from models.saliency import explain_with_logits

    calls = []
    handle = resnet18.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    try:
        maps, logits = explain_with_logits(resnet18, small_images, method, **FAST_OPTIONS.get(method, {}))
    finally:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(logits, resnet18(small_images), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps, explain(resnet18, small_images, method, **FAST_OPTIONS.get(method, {})))
    if method != "integrated-gradients":
        assert calls == [2]  # one forward, no extra pass for the probabilities


def test_explain_many_equals_explain_and_shares_one_pass(resnet18, small_images):
    from models.saliency import explain_many

    normgrad_ids = [m for m in METHOD_IDS if m.startswith("normgrad-")]
    calls = []
    handle = resnet18.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    try:
        shared = explain_many(resnet18, small_images, normgrad_ids, target=1)
    finally:
        handle.remove()
    assert len(calls) == 1  # eight NormGrad variants, one forward (and one backward)
    for method_id in normgrad_ids:
        torch.testing.assert_close(shared[method_id], explain(resnet18, small_images, method_id, target=1))
    layers = ["layer3.0", "layer4.1"]
    mixed = explain_many(
        resnet18,
        small_images,
        [
            "normgrad-scaling-single",
            "normgrad-conv3x3-combined",
            "gradcam",
            "guided-backprop",
            "guided-gradcam",
            "gradient",
        ],
        layers=layers,
        combine="minmax-product",
    )
    assert list(mixed) == [
        "normgrad-scaling-single",
        "normgrad-conv3x3-combined",
        "gradcam",
        "guided-backprop",
        "guided-gradcam",
        "gradient",
    ]
    torch.testing.assert_close(
        mixed["normgrad-scaling-single"],
        explain(resnet18, small_images, "normgrad-scaling-single", layers=layers, combine="minmax-product"),
    )
    torch.testing.assert_close(
        mixed["normgrad-conv3x3-combined"],
        explain(resnet18, small_images, "normgrad-conv3x3-combined", layers=layers, combine="minmax-product"),
    )
    for method_id in ("gradcam", "guided-gradcam", "gradient"):  # layers apply to NormGrad only
        torch.testing.assert_close(mixed[method_id], explain(resnet18, small_images, method_id))
    with pytest.raises(ValueError, match="unknown saliency method"):
        explain_many(resnet18, small_images, ["gradcam", "nope"])
