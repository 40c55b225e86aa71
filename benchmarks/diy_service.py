"""The do-it-yourself service NormGate is compared with (benchmarks/diy_comparison.py): what a developer would
write in an afternoon to serve the same checkpoint with an explanation.

No batching, no queue, no thread pool: an ``async def`` FastAPI endpoint that calls the model directly (so
requests are served one at a time, in arrival order), pydicom's ``pixel_array`` + min–max scaling, PIL
bilinear resize to the model grid, one forward, then

* ``method=gradcam``: captum ``LayerGradCam`` on ``layer4`` (its own second forward and backward), upsampled
  with ``LayerAttribution.interpolate``;
* ``method=normgrad``: a naive NormGrad conv1x1-combined (docs/algorithms.md, "NormGrad"): the weights keep
  ``requires_grad`` (as a loaded model has them), forward hooks keep the four block outputs with ``retain_grad``,
  and a full ``backward()`` of the target logit computes every weight gradient down to ``conv1`` before the maps
  are formed from the activations and their gradients; geometric mean of the upsampled maps.

The answer has the same fields NormGate's has (probability, decision, point, heatmap PNG in base64).

    DIY_CHECKPOINT=models/checkpoints/default .venv/bin/python -m uvicorn --app-dir benchmarks diy_service:app \
        --host 127.0.0.1 --port 8010
"""

from __future__ import annotations

import base64
import io
import os
import threading
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from fastapi import FastAPI, Request
from PIL import Image

from models import load_checkpoint

NORMGRAD_LAYERS = ("layer2.0", "layer3.0", "layer4.0", "layer4.1")


def load(folder: str | Path):
    checkpoint = load_checkpoint(folder)
    model = checkpoint.model.eval()
    for p in model.parameters():
        p.requires_grad_(True)  # as a DIY script has it: nobody freezes the weights
    return model, checkpoint.meta


def decode_dicom(body: bytes) -> np.ndarray:
    """pydicom's pixel_array, min–max scaled to [0, 1] (float32)."""
    ds = pydicom.dcmread(io.BytesIO(body))
    pixels = ds.pixel_array.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels


def to_tensor(gray: np.ndarray, meta) -> torch.Tensor:
    """PIL bilinear resize to the grid (as torchvision ``Resize`` on a PIL image), 3 channels, normalise."""
    h, w = meta.input_size
    small = np.asarray(Image.fromarray(gray, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)
    x = torch.from_numpy(small.clip(0.0, 1.0))[None].repeat(3, 1, 1)
    mean = torch.tensor(meta.mean)[:, None, None]
    std = torch.tensor(meta.std)[:, None, None]
    return ((x - mean) / std)[None]


def gradcam(model, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = model(x)
    attribution = LayerGradCam(model, model.layer4).attribute(x, target=target, relu_attributions=True)
    heatmap = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return logits, heatmap[:, 0].detach()


def naive_normgrad(model, x: torch.Tensor, target: int, layers=NORMGRAD_LAYERS) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1x1-combined NormGrad with a full backward (every weight gradient computed, then thrown away)."""
    modules = dict(model.named_modules())
    kept: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            kept[name] = output

        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in layers]
    try:
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits[:, target].sum().backward()
    finally:
        for h in handles:
            h.remove()
    maps = []
    for n in layers:
        a, g = kept[n].detach(), kept[n].grad
        m = torch.linalg.vector_norm(g, dim=1) * torch.linalg.vector_norm(a, dim=1)
        maps.append(F.interpolate(m[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0])
    combined = torch.ones_like(maps[0])
    for m in maps:
        combined = combined * m.pow(1.0 / len(maps))
    model.zero_grad(set_to_none=True)
    return logits.detach(), combined


def png_base64(heatmap: np.ndarray) -> str:
    low, high = float(heatmap.min()), float(heatmap.max())
    scaled = ((heatmap - low) / (high - low) * 255 if high > low else np.zeros_like(heatmap)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(scaled, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def assess_one(model, meta, body: bytes, method: str) -> dict:
    gray = decode_dicom(body)
    x = to_tensor(gray, meta)
    target = meta.positive_index
    logits, heatmap = (gradcam if method == "gradcam" else naive_normgrad)(model, x, target)
    probability = float(torch.softmax(logits, dim=1)[0, target])
    hm = heatmap[0].numpy()
    row, col = np.unravel_index(int(hm.argmax()), hm.shape)
    oh, ow = gray.shape
    return {
        "probability": probability,
        "decision": "reacquire" if probability >= meta.threshold else "accept",
        "point": {"x": int((col + 0.5) * ow / hm.shape[1]), "y": int((row + 0.5) * oh / hm.shape[0])},
        "heatmap": {"png_base64": png_base64(hm)},
    }


app = FastAPI(title="DIY explainer (benchmark only)")
_state: dict = {}
_load_lock = threading.Lock()


def _model():
    with _load_lock:
        if "model" not in _state:
            _state["model"], _state["meta"] = load(os.environ.get("DIY_CHECKPOINT", "models/checkpoints/default"))
    return _state["model"], _state["meta"]


@app.get("/readyz")
def readyz() -> dict:
    _model()
    return {"ready": True}


@app.post("/assess")
async def assess(request: Request, method: str = "normgrad") -> dict:
    body = await request.body()
    model, meta = _model()
    # The model runs right here, on the event loop: requests are served one after another. (Moving it to a
    # thread pool would run several forwards at once on one model, and the hooks of one request would record
    # another's activations: the DIY version that is both fast and right needs a lock — i.e. a queue.)
    return assess_one(model, meta, body, method)
