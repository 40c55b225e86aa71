"""NormGrad against hand-computed values (toy net) and an autograd/unfold reference (ResNet-18)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.saliency import explain

from .conftest import pearson

X = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.5, -1.0, 2.0], [-0.5, 1.0, 2.5, -3.0]])
W_FIRST = np.array([2.0, -1.0])  # conv1x1 1 → 2 channels
M_SECOND = np.array([[1.0, 1.0], [0.5, -1.0]])  # conv1x1 2 → 2 channels
V_HEAD = np.array([[1.0, -2.0], [3.0, 1.0]])  # linear 2 → 2 classes
TARGET = 1


class TwoLayerNet(nn.Module):
    """x → first (1×1 conv) → second (1×1 conv) → global average pool → linear. Linear, so hand-solvable."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(1, 2, 1, bias=False)
        self.second = nn.Conv2d(2, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor(W_FIRST).view(2, 1, 1, 1))
            self.second.weight.copy_(torch.tensor(M_SECOND).view(2, 2, 1, 1))
            self.head.weight.copy_(torch.tensor(V_HEAD))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.pool(self.second(self.first(x))).flatten(1))


def _hand_maps():
    """Per-layer NormGrad maps worked out on paper for TwoLayerNet (all gradients are spatially constant).

    a1_u = w·x_u, a2_u = M·a1_u; y_c = V_c · mean_u a2_u ⇒ g2 = V_c / (H·W), g1 = Mᵀ g2.
    """
    h, w = X.shape
    g2 = V_HEAD[TARGET] / (h * w)
    g1 = M_SECOND.T @ g2
    a1 = W_FIRST[:, None, None] * X[None]
    a2 = np.einsum("kj,jhw->khw", M_SECOND, a1)
    maps = {}
    for name, g, a in (("first", g1, a1), ("second", g2, a2)):
        g_norm = math.sqrt(float((g**2).sum()))
        x_norm = np.sqrt((a**2).sum(0))
        neighbourhood = np.zeros_like(X)
        for i in range(h):
            for j in range(w):
                total = 0.0
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if 0 <= i + di < h and 0 <= j + dj < w:
                            total += float((a[:, i + di, j + dj] ** 2).sum())
                neighbourhood[i, j] = math.sqrt(total)
        maps[name] = {
            "bias": np.full_like(X, g_norm),
            "scaling": np.sqrt(((g[:, None, None] * a) ** 2).sum(0)),
            "conv1x1": g_norm * x_norm,
            "conv3x3": g_norm * neighbourhood,
        }
    return maps


@pytest.fixture(scope="module")
def toy():
    return TwoLayerNet().eval(), torch.tensor(X, dtype=torch.float32)[None, None]


@pytest.mark.parametrize("kind", ["bias", "scaling", "conv1x1", "conv3x3"])
def test_toy_single_and_combined_match_hand_computation(toy, kind):
    model, image = toy
    hand = _hand_maps()
    single = explain(model, image, f"normgrad-{kind}-single", target=TARGET, layers=["first", "second"])
    np.testing.assert_allclose(single[0].numpy(), hand["second"][kind], rtol=1e-5, atol=1e-7)
    first_only = explain(model, image, f"normgrad-{kind}-single", target=TARGET, layers=["first"])
    np.testing.assert_allclose(first_only[0].numpy(), hand["first"][kind], rtol=1e-5, atol=1e-7)
    combined = explain(model, image, f"normgrad-{kind}-combined", target=TARGET, layers=["first", "second"])
    expected = np.sqrt(hand["first"][kind] * hand["second"][kind])  # geometric mean of J = 2 maps
    np.testing.assert_allclose(combined[0].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_toy_conv1x1_equals_frobenius_norm_of_weight_gradient_contribution(toy):
    """The per-location weight gradient of a virtual 1×1 conv is g_u x_uᵀ; its Frobenius norm is the map."""
    model, image = toy
    a1 = model.first(image).detach()
    virtual = torch.eye(2, requires_grad=True)
    per_location = torch.zeros(X.shape)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            mask = torch.zeros_like(a1)
            mask[..., i, j] = 1
            # Only location (i, j) passes through the virtual layer's weights.
            through = torch.einsum("kj,bjhw->bkhw", virtual, a1 * mask) + a1 * (1 - mask)
            out = model.head(model.pool(model.second(through)).flatten(1))[0, TARGET]
            (grad,) = torch.autograd.grad(out, virtual)
            per_location[i, j] = grad.norm()
    ours = explain(model, image, "normgrad-conv1x1-single", target=TARGET, layers=["first"])
    torch.testing.assert_close(ours[0], per_location, rtol=1e-5, atol=1e-7)


def test_toy_minmax_product_matches_seed_code_rule(toy):
    model, image = toy
    hand = _hand_maps()

    def minmax(m):
        return (m - m.min()) / (m.max() - m.min())

    ours = explain(
        model, image, "normgrad-scaling-combined", target=TARGET, layers=["first", "second"], combine="minmax-product"
    )
    expected = minmax(hand["first"]["scaling"]) * minmax(hand["second"]["scaling"])
    np.testing.assert_allclose(ours[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    # Only the bias type drops the last layer's map; conv3x3 keeps both.
    conv3x3 = explain(
        model, image, "normgrad-conv3x3-combined", target=TARGET, layers=["first", "second"], combine="minmax-product"
    )
    np.testing.assert_allclose(
        conv3x3[0].numpy(), minmax(hand["first"]["conv3x3"]) * minmax(hand["second"]["conv3x3"]), rtol=1e-5, atol=1e-6
    )


def test_bias_minmax_product_skips_last_layer():
    """A spatially varying gradient in the first layer; the last bias map must not enter the product."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    image = torch.randn(1, 1, 8, 8)
    both = explain(model, image, "normgrad-bias-combined", target=0, layers=["0", "2"], combine="minmax-product")
    first = explain(model, image, "normgrad-bias-single", target=0, layers=["0"])[0]
    expected = (first - first.min()) / (first.max() - first.min())
    torch.testing.assert_close(both[0], expected, rtol=1e-5, atol=1e-6)


def _reference_resnet_maps(model, images, target, kind):
    """Autograd on an explicit forward (no hooks), 3×3 norms by unfold, torch bilinear upsampling."""
    layer_outputs = []
    h = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    h = model.layer1(h)
    for stage in (model.layer2, model.layer3, model.layer4):
        for index, block in enumerate(stage):
            h = block(h)
            if index == 0 or (stage is model.layer4 and index == len(stage) - 1):
                h.retain_grad()
                layer_outputs.append(h)
    logits = model.fc(torch.flatten(model.avgpool(h), 1))
    logits.gather(1, target[:, None]).sum().backward()
    maps = []
    for a in layer_outputs:
        g = a.grad
        if kind == "bias":
            m = g.norm(dim=1)
        elif kind == "scaling":
            m = (g * a).norm(dim=1)
        elif kind == "conv1x1":
            m = g.norm(dim=1) * a.norm(dim=1)
        else:
            patches = F.unfold(a, kernel_size=3, padding=1)  # [B, K·9, h·w]
            m = g.norm(dim=1) * patches.norm(dim=1).view(a.shape[0], *a.shape[2:])
        maps.append(F.interpolate(m[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
    stacked = torch.stack(maps)
    return stacked, torch.exp(torch.log(stacked).mean(0))


@pytest.mark.parametrize("kind", ["bias", "scaling", "conv1x1", "conv3x3"])
def test_resnet18_combined_and_single_match_reference(resnet18_not_inplace, resnet18, images96, kind):
    target = torch.tensor([1, 0])
    per_layer, geometric = _reference_resnet_maps(resnet18_not_inplace, images96, target, kind)
    combined = explain(resnet18, images96, f"normgrad-{kind}-combined", target=target)
    torch.testing.assert_close(combined, geometric.detach(), rtol=2e-4, atol=1e-7)
    single = explain(resnet18, images96, f"normgrad-{kind}-single", target=target)
    torch.testing.assert_close(single, per_layer[-1].detach(), rtol=2e-4, atol=1e-7)


def test_default_layers_are_the_documented_ones(resnet18):
    from models.saliency import default_layers

    assert default_layers(resnet18) == ["layer2.0", "layer3.0", "layer4.0", "layer4.1"]
    torch.manual_seed(0)
    from models.architectures import build_model

    assert default_layers(build_model("resnet34")) == ["layer2.0", "layer3.0", "layer4.0", "layer4.2"]


def test_layers_override_and_single_uses_last_name(resnet18, images96):
    single = explain(resnet18, images96, "normgrad-conv1x1-single", layers=["layer3.0", "layer4.0"])
    only_last = explain(resnet18, images96, "normgrad-conv1x1-combined", layers=["layer4.0"])
    torch.testing.assert_close(single, only_last)
    three = explain(resnet18, images96, "normgrad-conv1x1-combined", layers=["layer2.1", "layer3.1", "layer4.0"])
    assert pearson(three, explain(resnet18, images96)) < 0.9999  # a different layer set gives a different map
