"""The seed code's post-processing and the path-method baselines, against independent computations.

- Grad-CAM ``postprocess="seed"``: a from-scratch separable Lanczos-3 resampler in NumPy (PIL's filter: kernel
  sinc(x)·sinc(x/3), centres at (i + ½)·in/out, weights normalised per output pixel, horizontal pass first, each
  pass rounded to 8 bits) agrees with the engine to one grey level.
- Guided backprop ``postprocess="seed"``: the positive part and the 99th-percentile clip on a hand-made gradient.
- Baselines: on a linear model, integrated gradients is exactly (x − x̄) ⊙ w, so the map is known in closed form
  for the mid-grey ("zero") and the darkest-pixel ("black") baseline.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.saliency import explain
from models.saliency.gradients import path_baseline
from models.saliency.layer_gradients import layer_activations_and_gradients
from models.saliency.postprocess import seed_gradcam_upsample, seed_guided_backprop_map


def _lanczos3(x: np.ndarray) -> np.ndarray:
    out = np.sinc(x) * np.sinc(x / 3.0)
    return np.where(np.abs(x) < 3.0, out, 0.0)


def _resample_axis(values: np.ndarray, out_size: int) -> np.ndarray:
    """Upsample along axis 0 as PIL does for Lanczos (support 3 input pixels when enlarging), then 8-bit round."""
    in_size = values.shape[0]
    scale = in_size / out_size
    out = np.empty((out_size, *values.shape[1:]))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - 3 + 0.5), 0), min(int(centre + 3 + 0.5), in_size)
        taps = np.arange(lo, hi)
        weights = _lanczos3(taps - centre + 0.5)
        weights /= weights.sum()
        out[i] = np.tensordot(weights, values[lo:hi], axes=1)
    return np.clip(np.round(out), 0, 255)


def _reference_seed_gradcam(cam: np.ndarray, size: int) -> np.ndarray:
    eight_bit = np.floor((cam - cam.min()) / (cam.max() - cam.min()) * 255.0)
    horizontal = _resample_axis(eight_bit.T, size).T
    return _resample_axis(horizontal, size) / 255.0


def test_seed_gradcam_is_an_8_bit_lanczos_upsampling_of_the_layer_map(resnet18, images96):
    rng = np.random.default_rng(0)
    cams = torch.from_numpy(rng.random((2, 3, 3)) ** 2).float()
    got = seed_gradcam_upsample(cams, (96, 96)).numpy()
    for cam, image in zip(cams.numpy().astype(np.float64), got):
        expected = _reference_seed_gradcam(cam, 96)
        assert np.max(np.abs(image - expected)) <= 1 / 255 + 1e-6
    levels = got * 255.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # 256 grey levels, nothing in between

    # Through explain: the same upsampling of the model's own ReLU'd Grad-CAM layer map.
    maps = explain(resnet18, images96, "gradcam", target=1, postprocess="seed")
    recorded = layer_activations_and_gradients(resnet18, images96, ["layer4"], 1)
    weights = recorded.gradients[0].float().mean(dim=(2, 3), keepdim=True)
    cam = (weights * recorded.activations[0].float()).sum(dim=1).clamp_min(0)
    torch.testing.assert_close(maps, seed_gradcam_upsample(cam, (96, 96)), rtol=0, atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError, match="postprocess"):
        explain(resnet18, images96, "gradcam", postprocess="bicubic")


def test_seed_guided_backprop_keeps_the_positive_part_and_clips_at_the_99th_percentile():
    gradient = torch.zeros(1, 3, 20, 20, dtype=torch.float64)
    gradient[0, 0] = torch.linspace(-1.0, 3.0, 400, dtype=torch.float64).view(20, 20)
    gradient[0, 1, 1, 1] = -50.0  # |g| would make this the argmax; the positive part ignores it
    gray = np.maximum(gradient[0].numpy(), 0).sum(axis=0) / 3.0  # positive part / max, channel sum
    top, low = np.percentile(gray, 99), gray.min()
    expected = np.clip((gray - low) / (top - low), 0, 1)
    got = seed_guided_backprop_map(gradient)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[1, 1] == 0.0
    assert int((got == 1.0).sum()) == 4  # the top 1 % of 400 pixels tie at 1 …
    assert np.unravel_index(np.argmax(got), got.shape) == (19, 16)  # … and argmax takes the first of them


class _Linear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.weight).flatten(1).sum(1)
        return torch.stack([-score, score], dim=1)


def test_path_baselines_zero_is_mid_grey_and_black_is_the_darkest_pixel():
    torch.manual_seed(2)
    weight = torch.randn(3, 8, 8)
    model = _Linear(weight).eval()
    images = torch.randn(2, 3, 8, 8) + torch.tensor([0.0, 1.5]).view(2, 1, 1, 1)
    darkest = images.flatten(1).amin(1).view(2, 1, 1, 1)
    torch.testing.assert_close(path_baseline(images, "black"), darkest)
    assert float(path_baseline(images, "zero")) == 0.0
    for baseline, reference in (("zero", torch.zeros(())), ("black", darkest), (-2.0, torch.tensor(-2.0))):
        got = explain(model, images, "integrated-gradients", target=1, baseline=baseline, steps=4)
        expected = ((images - reference) * weight).abs().sum(1)  # IG of a linear model, exactly
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=str(baseline))
    # Guided IG from the darkest pixel: completeness, Σ attribution = f(x) − f(x̄), holds along any path.
    from models.saliency.path_methods import guided_ig_attribution

    targets = torch.tensor([1, 1])
    attribution = guided_ig_attribution(model, images, targets, steps=8, baseline="black")
    scores = model(images)[:, 1] - model(darkest.expand_as(images))[:, 1]
    torch.testing.assert_close(attribution.flatten(1).sum(1), scores.detach(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="baseline"):
        explain(model, images, "integrated-gradients", baseline="white")
    assert math.isfinite(float(explain(model, images, "guided-ig", target=1, baseline="black", steps=4).sum()))
