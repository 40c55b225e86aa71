"""The papers' whole Object-CXR design in one command, scaled to the machine (issue 15, item 4).

Özer et al. 2023 (§4.3–4.5, Tables 2–5): ResNet-34 and EfficientNet-B0, 3 trained seeds each (ImageNet
fine-tuning, SGD with momentum 0.9, lr 0.005 ÷ 10 every 5 epochs, batch 16, 20 epochs, colour jitter + affine +
horizontal flip, 600 × 600), Pointing Game of every saliency method with and without Gaussian smoothing (σ = 1),
randomisation checks (semi-random: ImageNet backbone + random head; fully random) repeated over 3 seeds, repeated
Pointing Game mean ± std, and the Difference of Means between the two architectures.

NormGate's run, one command, resumable:

1. ``pretext/<arch>/`` — a backbone per architecture pretrained by the self-supervised rotation task on the
   training images (:mod:`models.pretext`; no ImageNet weights exist offline). It plays ImageNet's part twice:
   the trained models are fine-tuned from it, and ``pretrained-backbone`` (the papers' semi-random) is it with a
   re-initialised head.
2. ``models/<arch>-s<seed>/`` — ``python -m models.train`` with the papers' recipe (SGD, momentum 0.9, lr 0.005,
   batch 16, their augmentations) scaled down: grid, images, epochs and the lr step (÷ 10 every quarter of the
   epochs, the papers' 5 of 20) as ``--scale`` says.
3. ``cells/<style>/<init>-sigma<σ>/`` — one ``python -m service.evaluate`` job per (test style, init ∈ {trained,
   random-head, pretrained-backbone, full-random}, σ ∈ {0, 1}) over all six checkpoints, with the papers' ten
   methods and the model-free controls, at the relative tolerance of the checkpoints (τ = 2.5 % of the side, the
   papers' 15 px at 600). Randomised inits get one seed per checkpoint (3 per architecture).
4. ``report.html`` — tables shaped like the papers' Tables 2, 4 and 5 (and a classification table with every
   randomised model's AUC), the published Object-CXR numbers beside ours, the controls in every table.

Every trained model, pretext backbone and finished cell stays on disk; an interrupted run continues where it
stopped when the same command is given again (training resumes from its last epoch, an evaluation job from its
last batch).

    nice -n 10 .venv/bin/python benchmarks/paper_run.py --train-data data/synth-v2-train \\
        --test-data v2=data/synth-v2-test --test-data heldout=data/synth-heldout-test --scale cpu --out runs/paper

Scales (docs/evaluation.md, "The papers' design in one command"): ``smoke`` (32 px, 16 images, 1 epoch, 2 seeds:
the test suite's), ``cpu`` (128 px, 600 training images, 4 epochs, 100 test positives per style), ``gpu`` (320
px, every image, 20 epochs) and ``paper`` (600 px, every image, 20 epochs).
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.evaluation import CONTROL_METHODS

ARCHS = ("resnet34", "efficientnet_b0")
INITS = ("trained", "random-head", "pretrained-backbone", "full-random")
SIGMAS = (0.0, 1.0)
PAPER_METHODS = (
    "input-x-grad",
    "guided-backprop",
    "guided-gradcam",
    "gradcam",
    "normgrad-scaling-single",
    "normgrad-scaling-combined",
    "normgrad-conv1x1-single",
    "normgrad-conv1x1-combined",
    "normgrad-conv3x3-single",
    "normgrad-conv3x3-combined",
)
METHODS = PAPER_METHODS + CONTROL_METHODS

# Published Object-CXR numbers, Özer et al. 2023 (τ = 15 px at 600 px). Table 2: (unsmoothed, smoothed);
# Table 4: mean, std of the semi-random (SR), fully random (FR) and repeated trained ResNet-34s (smoothed);
# Table 5: mean, std of the repeated ResNet-34 and EfficientNet-B0, and their Difference of Means.
PUBLISHED_TABLE2 = {
    "input-x-grad": (0.162, 0.670),
    "guided-backprop": (0.132, 0.648),
    "guided-gradcam": (0.256, 0.640),
    "gradcam": (0.572, 0.546),
    "normgrad-scaling-single": (0.850, 0.852),
    "normgrad-scaling-combined": (0.840, 0.838),
    "normgrad-conv1x1-single": (0.848, 0.848),
    "normgrad-conv1x1-combined": (0.840, 0.838),
    "normgrad-conv3x3-single": (0.850, 0.850),
    "normgrad-conv3x3-combined": (0.846, 0.846),
}
PUBLISHED_TABLE4 = {  # method: (SR mean, SR std, FR mean, FR std, repeated mean, repeated std)
    "input-x-grad": (0.111, 0.028, 0.185, 0.041, 0.663, 0.013),
    "guided-backprop": (0.091, 0.008, 0.160, 0.007, 0.640, 0.053),
    "guided-gradcam": (0.166, 0.055, 0.200, 0.028, 0.645, 0.012),
    "gradcam": (0.200, 0.066, 0.093, 0.103, 0.545, 0.018),
    "normgrad-scaling-single": (0.279, 0.021, 0.126, 0.032, 0.852, 0.000),
    "normgrad-scaling-combined": (0.320, 0.029, 0.147, 0.053, 0.843, 0.005),
    "normgrad-conv1x1-single": (0.280, 0.000, 0.153, 0.025, 0.851, 0.006),
    "normgrad-conv1x1-combined": (0.325, 0.004, 0.185, 0.027, 0.839, 0.010),
    "normgrad-conv3x3-single": (0.298, 0.000, 0.153, 0.017, 0.853, 0.003),
    "normgrad-conv3x3-combined": (0.334, 0.016, 0.193, 0.027, 0.845, 0.005),
}
PUBLISHED_TABLE5 = {  # method: (R34 mean, R34 std, EB0 mean, EB0 std, DoM)
    "input-x-grad": (0.663, 0.013, 0.617, 0.036, 0.046),
    "guided-backprop": (0.640, 0.053, 0.595, 0.045, 0.045),
    "guided-gradcam": (0.645, 0.012, 0.784, 0.005, 0.139),
    "gradcam": (0.545, 0.020, 0.771, 0.005, 0.226),
    "normgrad-scaling-single": (0.852, 0.000, 0.857, 0.010, 0.005),
    "normgrad-scaling-combined": (0.843, 0.005, 0.856, 0.002, 0.013),
    "normgrad-conv1x1-single": (0.851, 0.006, 0.850, 0.000, 0.001),
    "normgrad-conv1x1-combined": (0.839, 0.010, 0.851, 0.008, 0.011),
    "normgrad-conv3x3-single": (0.853, 0.003, 0.863, 0.002, 0.009),
    "normgrad-conv3x3-combined": (0.845, 0.005, 0.859, 0.007, 0.014),
}


@dataclass(frozen=True)
class Scale:
    """How far the run is scaled down from the papers' (600 px, every image, 20 epochs, 3 seeds)."""

    grid: int
    train_images: int | None  # first N rows of train.csv (None: all)
    dev_images: int | None
    test_positives: int | None  # first N positives + N negatives of each test split (None: all)
    epochs: int
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 16
    pretext_images: int | None = None  # None: the training images
    pretext_epochs: int = 2
    cell_reports: bool = True  # each cell's own report.html with its gallery (seconds per cell)


SCALES = {
    "smoke": Scale(
        32, 16, 8, 4, 1, seeds=(0, 1), batch_size=8, pretext_images=16, pretext_epochs=1, cell_reports=False
    ),
    "cpu": Scale(128, 600, 150, 100, 4, pretext_images=800),
    "gpu": Scale(320, None, None, None, 20, pretext_epochs=10),
    "paper": Scale(600, None, None, None, 20, pretext_epochs=10),
}


def _log(message: str) -> None:
    print(f"[paper-run {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def subset_root(source: Path, target: Path, limits: dict[str, int | None], positives_only_pairs: bool = False) -> Path:
    """A data root whose ``<split>.csv`` lists the first rows of ``source``'s and whose image folders link there.

    ``positives_only_pairs``: take the first N images with an annotation and the first N without (test splits).
    """
    target.mkdir(parents=True, exist_ok=True)
    for split, limit in limits.items():
        lines = (source / f"{split}.csv").read_text(encoding="utf-8").splitlines()
        header, rows = lines[0], [r for r in lines[1:] if r.strip()]
        if limit is not None and positives_only_pairs:
            annotated = [r for r in rows if r.split(",", 1)[1].strip()]
            empty = [r for r in rows if not r.split(",", 1)[1].strip()]
            rows = annotated[:limit] + empty[:limit]
        elif limit is not None:
            rows = rows[:limit]
        csv_path = target / f"{split}.csv"
        text = "\n".join([header, *rows]) + "\n"
        if not csv_path.is_file() or csv_path.read_text(encoding="utf-8") != text:
            csv_path.write_text(text, encoding="utf-8")
        link = target / split
        if not link.exists():
            link.symlink_to((source / split).resolve(), target_is_directory=True)
    return target


def pretext_backbone(out: Path, arch: str, train_root: Path, scale: Scale, threads: int) -> Path:
    from models.pretext import PRETEXT_META
    from models.pretext import main as pretext_main

    folder = out / "pretext" / arch
    if (folder / PRETEXT_META).is_file():
        return folder
    _log(f"pretext backbone {arch}")
    images = scale.pretext_images if scale.pretext_images is not None else scale.train_images
    argv = ["--data", str(train_root), "--split", "train", "--arch", arch, "--input-size", str(scale.grid)]
    argv += ["--epochs", str(scale.pretext_epochs), "--threads", str(threads), "--out", str(folder)]
    if images is not None:
        argv += ["--images", str(images)]
    return pretext_main(argv)


def trained_model(
    out: Path, arch: str, seed: int, data: Path, pretext: Path, scale: Scale, threads: int, device: str
) -> Path:
    from models.pretext import PRETEXT_WEIGHTS
    from models.train import SCRATCH_MEAN, SCRATCH_STD, STATE_DIR
    from models.train import main as train_main

    folder = out / "models" / f"{arch}-s{seed}"
    if (folder / "model.json").is_file():
        return folder
    _log(f"training {arch} seed {seed}")
    argv = ["--data", str(data), "--out", str(folder), "--arch", arch, "--input-size", str(scale.grid)]
    argv += ["--epochs", str(scale.epochs), "--lr-step", str(max(1, round(scale.epochs / 4)))]
    argv += ["--batch-size", str(scale.batch_size), "--lr", "0.005", "--momentum", "0.9", "--seed", str(seed)]
    argv += ["--pretrained", str(pretext / PRETEXT_WEIGHTS), "--mean", *map(str, SCRATCH_MEAN)]
    argv += ["--std", *map(str, SCRATCH_STD), "--threads", str(threads), "--workers", "1", "--device", device]
    argv += ["--name", f"paper-{arch}-s{seed}", "--version", "1"]
    if (folder / STATE_DIR / "last.json").is_file():
        argv.append("--resume")
    train_main(argv)
    return folder


def evaluate_cell(
    out: Path,
    style: str,
    data: Path,
    init: str,
    sigma: float,
    models: list[Path],
    pretexts: list[Path],
    threads: int,
    device: str,
    cell_report: bool = True,
) -> dict[str, Any]:
    from service.evaluation.cli import main as evaluate_main

    folder = out / "cells" / style / f"{init}-sigma{sigma:g}"
    results_path = folder / "results.json"
    if not results_path.is_file():
        _log(f"cell {style} {init} σ={sigma:g}")
        argv = ["--data", str(data), "--split", "test", "--model", ",".join(str(m) for m in models)]
        argv += ["--methods", ",".join(METHODS), "--init", init, "--smooth-sigma", f"{sigma:g}", "--seed", "0"]
        argv += ["--batch-size", "8", "--device", device, "--out", str(folder), "--quiet"]
        if init == "pretrained-backbone":
            argv += ["--pretext", ",".join(str(p) for p in pretexts)]
        if not cell_report:
            argv.append("--no-report")
        import torch

        torch.set_num_threads(threads)
        if evaluate_main(argv) != 0:
            raise RuntimeError(f"evaluation cell {folder} failed; see the message above (rerun to resume)")
    results: dict[str, Any] = json.loads(results_path.read_text(encoding="utf-8"))
    return results


# --- report ------------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pm(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.3f} ± {entry['std']:.3f}"


def _published_pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _row(method: str, cells: list[str]) -> str:
    control = method in CONTROL_METHODS
    label = f"{method} (control)" if control else method
    return (
        f"<tr{' class=control' if control else ''}><td>{_esc(label)}</td>"
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>"
    )


def _table(head: list[str], rows: list[str]) -> str:
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{_esc(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def render_paper_report(cells: dict[tuple[str, str, float], dict[str, Any]], scale: Scale, info: dict[str, Any]) -> str:
    from service.evaluation.report import html_page, tolerance_text

    styles = sorted({k[0] for k in cells}, key=lambda s: (s != "v2", s))
    parts = [
        "<h1>The papers' design, scaled down</h1>",
        f"<p class='meta'>Özer et al. 2023 Tables 2, 4, 5 (Object-CXR) beside NormGate's run: {_esc(info['scale'])} "
        f"scale — grid {scale.grid} px (papers 600), training images {scale.train_images or 'all'}, "
        f"{scale.epochs} epoch(s) (papers 20; lr ÷ 10 every {max(1, round(scale.epochs / 4))}), seeds "
        f"{', '.join(map(str, scale.seeds))} per architecture, test positives per style "
        f"{scale.test_positives or 'all'}. Trained models are fine-tuned from NormGate's own rotation-pretext "
        "backbone (the papers fine-tune ImageNet weights); <code>pretrained-backbone</code> is that backbone with "
        "a random head, NormGate's analogue of the papers' semi-random (SR). Published numbers are on real "
        "Object-CXR radiographs; ours on synthetic ones: compare the pattern, not the digits.</p>",
    ]
    for style in styles:
        trained = {sigma: cells[(style, "trained", sigma)] for sigma in SIGMAS}
        smoothed = {init: cells[(style, init, 1.0)] for init in INITS}
        archs = sorted({a for r in trained[1.0]["repeated"].values() for a in r})
        parts.append(f"<h2>Test style <code>{_esc(style)}</code></h2>")
        parts.append(f"<p class='meta'>{_esc(tolerance_text(trained[1.0]))}</p>")

        head = ["method"] + [f"{a} σ={s:g}" for a in archs for s in SIGMAS] + ["published σ=0", "published σ=1"]
        rows = []
        for m in METHODS:
            ours = [_pm(trained[s]["repeated"].get(m, {}).get(a)) for a in archs for s in SIGMAS]
            pub = PUBLISHED_TABLE2.get(m)
            rows.append(_row(m, ours + ([f"{pub[0]:.3f}", f"{pub[1]:.3f}"] if pub else ["–", "–"])))
        parts.append("<h3>Table 2 — smoothing (trained models, mean ± std over seeds)</h3>" + _table(head, rows))

        head = (
            ["method"]
            + [f"{a} {i}" for a in archs for i in INITS]
            + ["published SR", "published FR", "published repeated"]
        )
        rows = []
        for m in METHODS:
            ours = [_pm(smoothed[i]["repeated"].get(m, {}).get(a)) for a in archs for i in INITS]
            pub4 = PUBLISHED_TABLE4.get(m)
            published = (
                [_published_pm(pub4[0], pub4[1]), _published_pm(pub4[2], pub4[3]), _published_pm(pub4[4], pub4[5])]
                if pub4
                else ["–"] * 3
            )
            rows.append(_row(m, ours + published))
        parts.append(
            "<h3>Table 4 — randomisation and repeatability (σ = 1, mean ± std over 3 seeds)</h3>"
            "<p class='note'>random-head: the trained backbone with a new head; pretrained-backbone: the pretext "
            "backbone with a new head (the papers' SR); full-random: every layer new (FR).</p>" + _table(head, rows)
        )

        dom = trained[1.0].get("dom", {})
        head = (
            ["method"] + [f"{a} mean ± std" for a in archs] + ["DoM", "published R34", "published EB0", "published DoM"]
        )
        rows = []
        for m in METHODS:
            ours = [_pm(trained[1.0]["repeated"].get(m, {}).get(a)) for a in archs]
            d = dom.get(m)
            pub5 = PUBLISHED_TABLE5.get(m)
            published = (
                [_published_pm(pub5[0], pub5[1]), _published_pm(pub5[2], pub5[3]), f"{pub5[4]:.3f}"]
                if pub5
                else ["–"] * 3
            )
            rows.append(_row(m, [*ours, "–" if d is None else f"{d:.3f}", *published]))
        parts.append("<h3>Table 5 — two architectures (trained, σ = 1), Difference of Means</h3>" + _table(head, rows))

        rows = []
        for init in INITS:
            result = cells[(style, init, 0.0)]
            for key, c in sorted(result["classification"].items()):
                auc = c.get("auc")
                flag = ""
                if init != "trained" and auc is not None and abs(auc - 0.5) > 0.1:
                    flag = " <strong>(not ≈ 0.5)</strong>"
                rows.append(
                    f"<tr><td>{_esc(key)}</td><td>{_esc(init)}</td><td>{_esc(result['models'][key]['arch'])}</td>"
                    f"<td>{'–' if auc is None else f'{auc:.3f}'}{flag}</td><td>{c.get('n')}</td></tr>"
                )
        parts.append(
            "<h3>Classification (σ-independent): every model's ROC AUC; a randomised model should be ≈ 0.5</h3>"
            + _table(["model", "init", "arch", "ROC AUC", "images"], rows)
        )
    parts.append(f"<p class='meta'>{_esc(json.dumps(info))}</p>")
    return html_page("NormGate: the papers' design", "\n".join(parts))


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-data", required=True, help="root with train.csv and dev.csv (Object-CXR layout)")
    p.add_argument("--test-data", action="append", required=True, help="STYLE=ROOT with test.csv (repeatable)")
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the scale's)")
    p.add_argument("--epochs", type=int, default=None, help="override the scale's epochs")
    p.add_argument("--grid", type=int, default=None, help="override the scale's grid")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (a lent GPU)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    if args.seeds:
        scale = replace(scale, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.epochs:
        scale = replace(scale, epochs=args.epochs)
    if args.grid:
        scale = replace(scale, grid=args.grid)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    train_root = subset_root(
        Path(args.train_data), out / "data" / "train", {"train": scale.train_images, "dev": scale.dev_images}
    )
    styles: dict[str, Path] = {}
    for item in args.test_data:
        style, sep, root = item.partition("=")
        if not sep:
            p.error(f"--test-data takes STYLE=ROOT, got {item!r}")
        styles[style] = subset_root(
            Path(root), out / "data" / style, {"test": scale.test_positives}, positives_only_pairs=True
        )

    pretexts = {arch: pretext_backbone(out, arch, train_root, scale, args.threads) for arch in archs}
    models = [
        trained_model(out, arch, seed, train_root, pretexts[arch], scale, args.threads, args.device)
        for arch in archs
        for seed in scale.seeds
    ]
    cells = {
        (style, init, sigma): evaluate_cell(
            out,
            style,
            data,
            init,
            sigma,
            models,
            list(pretexts.values()),
            args.threads,
            args.device,
            scale.cell_reports,
        )
        for style, data in styles.items()
        for init in INITS
        for sigma in SIGMAS
    }
    info = {
        "scale": args.scale,
        "settings": asdict(scale),
        "archs": archs,
        "styles": {k: str(v) for k, v in styles.items()},
        "seconds_this_invocation": round(time.monotonic() - started, 1),
    }
    (out / "paper_run.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    report = out / "report.html"
    report.write_text(render_paper_report(cells, scale, info), encoding="utf-8")
    _log(f"report: {report} ({info['seconds_this_invocation']} s)")
    return report


if __name__ == "__main__":
    main()
