"""Baseline methods against captum on a seeded ResNet-18, and guided backprop against hand computation."""

import warnings

import numpy as np
import pytest
import torch
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Saliency,
)
from torch import nn

from models.saliency import explain
from models.saliency.gradients import guided_backprop_gradient, trapezoid_alphas_and_weights
from models.saliency.hooks import frozen_for_explanation

from .conftest import pearson

TARGET = torch.tensor([0, 1])


@pytest.fixture(autouse=True)
def _quiet_captum():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _assert_each_image_correlates(ours, reference, minimum=0.99):
    for i in range(ours.shape[0]):
        assert float(reference[i].abs().max()) > 0, "degenerate reference map"
        assert pearson(ours[i], reference[i]) >= minimum


def test_gradcam_matches_captum(resnet18_not_inplace, resnet18, images96):
    # The untrained net predicts class 1 for both images; class 0's Grad-CAM is ReLU'd to all zeros.
    predicted = resnet18(images96).argmax(1)
    cam = LayerGradCam(resnet18_not_inplace, resnet18_not_inplace.layer4)
    reference = cam.attribute(images96, target=predicted, relu_attributions=True)
    reference = LayerAttribution.interpolate(reference, images96.shape[-2:], "bilinear")[:, 0].detach()
    ours = explain(resnet18, images96, "gradcam")
    _assert_each_image_correlates(ours, reference)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_guided_backprop_matches_captum(resnet18_not_inplace, resnet18, images96):
    reference = GuidedBackprop(resnet18_not_inplace).attribute(images96, target=TARGET).abs().sum(1).detach()
    ours = explain(resnet18, images96, "guided-backprop", target=TARGET)
    _assert_each_image_correlates(ours, reference)


def test_input_x_grad_and_gradient_match_captum(resnet18_not_inplace, resnet18, images96):
    reference = InputXGradient(resnet18_not_inplace).attribute(images96, target=TARGET).abs().sum(1).detach()
    _assert_each_image_correlates(explain(resnet18, images96, "input-x-grad", target=TARGET), reference)
    saliency = Saliency(resnet18_not_inplace).attribute(images96, target=TARGET, abs=True).sum(1).detach()
    _assert_each_image_correlates(explain(resnet18, images96, "gradient", target=TARGET), saliency)


def test_integrated_gradients_matches_captum(resnet18_not_inplace, resnet18, images96):
    steps = 32  # the default (docs/algorithms.md)
    images = images96[:, :, :64, :64]
    reference = (
        IntegratedGradients(resnet18_not_inplace)
        .attribute(images, target=TARGET, n_steps=steps, method="riemann_trapezoid")
        .detach()
    )
    ours = explain(resnet18, images, "integrated-gradients", target=TARGET)
    _assert_each_image_correlates(ours, reference.abs().sum(1))
    # Same path points; captum's trapezoid steps are 1/n where the rule's are 1/(n−1).
    torch.testing.assert_close(ours, reference.abs().sum(1) * steps / (steps - 1), rtol=1e-3, atol=1e-6)


def test_guided_ig_without_deviation_is_left_riemann_ig(resnet18_not_inplace, resnet18, images96):
    images = images96[:, :, :32, :32]
    reference = (
        IntegratedGradients(resnet18_not_inplace)
        .attribute(images, target=TARGET, n_steps=6, method="riemann_left")
        .detach()
        .abs()
        .sum(1)
    )
    ours = explain(resnet18, images, "guided-ig", target=TARGET, steps=6, max_dist=0.0)
    _assert_each_image_correlates(ours, reference)
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-6)


def test_guided_ig_moves_low_gradient_features_first(resnet18, images96):
    """With deviation allowed the path leaves the straight line, so the attribution changes."""
    images = images96[:, :, :32, :32]
    straight = explain(resnet18, images, "guided-ig", target=TARGET, steps=6, max_dist=0.0)
    guided = explain(resnet18, images, "guided-ig", target=TARGET, steps=6, max_dist=0.1)
    assert not torch.allclose(straight, guided, rtol=1e-3, atol=1e-6)


def test_trapezoid_weights_integrate_exactly_linear_functions():
    alphas, weights = trapezoid_alphas_and_weights(5)
    assert torch.allclose(alphas, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float((weights * (3 * alphas + 1)).sum()) == pytest.approx(2.5)  # ∫₀¹ 3α + 1 dα


def test_guided_gradcam_is_product_of_its_parts(resnet18, images96):
    product = explain(resnet18, images96, "gradcam", target=TARGET) * explain(
        resnet18, images96, "guided-backprop", target=TARGET
    )
    torch.testing.assert_close(explain(resnet18, images96, "guided-gradcam", target=TARGET), product)


class _OneActivationNet(nn.Module):
    """x [1, 1, 2, 2] → 1×1 conv to 2 channels (weights w) → activation → mean → linear (weights V)."""

    def __init__(self, activation: nn.Module, w, v):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.act = activation
        self.head = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(w, dtype=torch.float32).view(2, 1, 1, 1))
            self.head.weight.copy_(torch.tensor([v], dtype=torch.float32))

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


def _silu_derivative(z):
    s = 1 / (1 + np.exp(-z))
    return s + z * s * (1 - s)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_guided_backprop_follows_eq5_and_eq8(activation):
    w, v = [1.5, -0.5], [2.0, -3.0]  # the second channel's upstream gradient is negative
    x = np.array([[0.8, -1.2], [0.3, 2.0]])
    module = nn.ReLU() if activation == "relu" else nn.SiLU()
    model = _OneActivationNet(module, w, v).eval()
    g = np.array(v) / 4.0  # upstream gradient at the activation output, every location
    z = np.array(w)[:, None, None] * x[None]  # pre-activation
    if activation == "relu":
        guided = (z > 0) * np.maximum(g, 0)[:, None, None]  # eq. 5
    else:
        guided = _silu_derivative(z) * (_silu_derivative(g) * g)[:, None, None]  # eq. 8
    expected = (np.array(w)[:, None, None] * guided).sum(0)
    image = torch.tensor(x, dtype=torch.float32)[None, None]
    with frozen_for_explanation(model):
        ours = guided_backprop_gradient(model, image, 0)
    np.testing.assert_allclose(ours[0, 0].numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        explain(model, image, "guided-backprop", target=0)[0].numpy(), np.abs(expected), rtol=1e-5, atol=1e-7
    )


def test_smoothgrad_without_noise_is_gradient_and_is_seeded(resnet18, images96):
    plain = explain(resnet18, images96, "gradient", target=TARGET)
    torch.testing.assert_close(
        explain(resnet18, images96, "smoothgrad", target=TARGET, noise_level=0.0, samples=3),
        plain,
        rtol=1e-4,
        atol=1e-7,
    )
    a = explain(resnet18, images96, "smoothgrad", target=TARGET, samples=4, seed=7)
    b = explain(resnet18, images96, "smoothgrad", target=TARGET, samples=4, seed=7)
    c = explain(resnet18, images96, "smoothgrad", target=TARGET, samples=4, seed=8)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_smoothgrad_is_mean_gradient_over_noisy_copies(resnet18, images96):
    """Reference: the same unit noise drawn by hand, gradients by captum's Saliency one copy at a time."""
    samples, level = 3, 0.1
    generator = torch.Generator().manual_seed(0)
    unit = torch.randn((samples, 1, *tuple(images96.shape[1:])), generator=generator)
    spread = images96.flatten(1).amax(1) - images96.flatten(1).amin(1)
    sigma = (level * spread).view(-1, 1, 1, 1)
    total = torch.zeros_like(images96)
    for k in range(samples):
        total += Saliency(resnet18).attribute(images96 + unit[k] * sigma, target=TARGET, abs=False).detach()
    reference = (total / samples).abs().sum(1)
    ours = explain(resnet18, images96, "smoothgrad", target=TARGET, samples=samples, noise_level=level, seed=0)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)
