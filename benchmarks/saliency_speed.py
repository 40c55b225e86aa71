"""How fast is NormGrad-combined, against its floor and against the libraries users would reach for?

On one model and one batch, in one run, with the candidates interleaved round by round (so a noisy, shared
machine slows all of them alike), it times:

- ``floor``: the bare forward + cut backward NormGrad needs: frozen weights, one forward whose earliest
  hooked layer output is a graph leaf, one ``autograd.grad`` to the hooked outputs. No maps.
- ``normgrad``: ``explain(model, x, "normgrad-conv1x1-combined")`` (the service default), same layers.
- ``pgc-gradcam-4``: pytorch-grad-cam ``GradCAM`` on the same four layers, as its README runs it
  (weights trainable, so its backward computes every weight gradient).
- ``gradcam``: ``explain(model, x, "gradcam")`` on the last block.
- ``captum-layergradcam``: captum ``LayerGradCam`` on the same block + bilinear upsampling.

    .venv/bin/python -m benchmarks.saliency_speed --arch resnet34 --size 320 --batch 4
    .venv/bin/python -m benchmarks.saliency_speed --arch resnet34 --size 600 --batch 1
    .venv/bin/python -m benchmarks.saliency_speed --device cuda --batch 32 --size 600 --amp bf16

Prints one table (median and interquartile range of wall time, median process CPU time per call) and the
three ratios the issue asks about (from CPU time on CPU, wall time on CUDA). This is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
import warnings

import torch

from models.architectures import build_model, default_gradcam_layer
from models.saliency import default_layers, explain


def _module(model, name):
    return dict(model.named_modules())[name]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_pass(model, images, layer_names, target: int | None = None):
    """Forward + backward cut at the earliest hooked layer, with nothing else (frozen model assumed): the
    model's own work for NormGrad, no maps. The score is ``target``'s logit, or the predicted class's."""
    outputs = []

    def hook(module, inputs, output):
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        outputs.append(output)
        return output

    handles = [_module(model, n).register_forward_hook(hook) for n in layer_names]
    try:
        with torch.enable_grad():
            logits = model(images)
            logits = logits.float()
            if target is None:
                score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            else:
                score = logits[:, target].sum()
            grads = torch.autograd.grad(score, outputs)
    finally:
        for h in handles:
            h.remove()
    return grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip", default="", help="comma-separated candidates to leave out")
    args = parser.parse_args()

    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch).eval().to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    layers = default_layers(model)
    cam_layer = default_gradcam_layer(args.arch)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    with torch.no_grad():
        predicted = model(images).argmax(1)
    pgc_targets = [ClassifierOutputTarget(int(c)) for c in predicted]

    def run_floor():
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            with autocast():
                floor_pass(model, images, layers)
        finally:
            for p in params:
                p.requires_grad_(True)

    def run_normgrad():
        with autocast():
            explain(model, images, "normgrad-conv1x1-combined", layers=layers)

    pgc_cam = GradCAM(model=model, target_layers=[_module(model, n) for n in layers])

    def run_pgc():
        with autocast():
            pgc_cam(input_tensor=images, targets=pgc_targets)
        model.zero_grad(set_to_none=True)

    def run_gradcam():
        with autocast():
            explain(model, images, "gradcam")

    captum_cam = LayerGradCam(model, _module(model, cam_layer))

    def run_captum():
        with autocast():
            attr = captum_cam.attribute(images, target=predicted, relu_attributions=True)
            LayerAttribution.interpolate(attr, images.shape[-2:], "bilinear")
        model.zero_grad(set_to_none=True)

    candidates = {
        "floor": run_floor,
        "normgrad": run_normgrad,
        "pgc-gradcam-4": run_pgc,
        "gradcam": run_gradcam,
        "captum-layergradcam": run_captum,
    }
    for name in filter(None, args.skip.split(",")):
        candidates.pop(name, None)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    cpu_times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(args.warmup + args.repeats):
        for name, fn in candidates.items():
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    pgc_cam.activations_and_grads.release()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"# {args.arch} {args.size}x{args.size} batch {args.batch} on {device.type} ({device_name}), "
        f"threads {torch.get_num_threads()}, amp {args.amp}, channels_last {args.channels_last}, "
        f"torch {torch.__version__}, load avg {load:.1f}, {args.repeats} rounds"
    )
    print(f"# NormGrad layers {layers}; Grad-CAM layer {cam_layer}")
    # On a shared CPU, wall time includes waiting for other processes; process CPU time (all threads) does
    # not, so the ratios use it on CPU and wall time on CUDA (where the CPU mostly waits).
    print(f"{'candidate':<22}{'wall median ms':>15}{'wall q1':>9}{'wall q3':>9}{'cpu median ms':>15}")
    basis = times if device.type == "cuda" else cpu_times
    medians = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        medians[name] = statistics.median(basis[name])
        print(
            f"{name:<22}{1000 * statistics.median(values):>15.1f}{1000 * q[0]:>9.1f}{1000 * q[2]:>9.1f}"
            f"{1000 * statistics.median(cpu_times[name]):>15.1f}"
        )
    print(f"# ratios from {'wall' if device.type == 'cuda' else 'process CPU'} time medians")
    if {"normgrad", "floor"} <= medians.keys():
        print(f"normgrad / floor                 = {medians['normgrad'] / medians['floor']:.3f}  (goal <= 1.1)")
    if {"normgrad", "pgc-gradcam-4"} <= medians.keys():
        print(f"pytorch-grad-cam(4) / normgrad   = {medians['pgc-gradcam-4'] / medians['normgrad']:.2f}  (goal >= 1.7)")
    if {"gradcam", "captum-layergradcam"} <= medians.keys():
        print(
            f"gradcam / captum LayerGradCam    = {medians['gradcam'] / medians['captum-layergradcam']:.3f}  "
            "(goal <= 1.0)"
        )


if __name__ == "__main__":
    main()
