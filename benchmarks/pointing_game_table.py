"""The papers' Pointing Game table on a data set: methods × {trained, semi-random, full-random} × σ {0, 1}.

Reproduces the layout of Özer et al. 2023 Tables 2 and 4 (and MIDL 2021 Table 2) with NormGate's engine
(models/evaluation.py — the same code as ``python -m service.evaluate``). It is a benchmark, not a test: the
three initialisations are evaluated in one pass over the images (each image decoded once, each map computed
once and scored unsmoothed and smoothed), and it stops cleanly at ``--time-budget-s``, reporting how many
images it covered, so a partial run on a slow machine is still an honest table.

    .venv/bin/python benchmarks/pointing_game_table.py --data data/synthetic-eval --model models/checkpoints/default \\
        --out artifacts/pointing-game-table [--limit 1000] [--time-budget-s 3000] [--methods …]

Writes OUT/table.md (markdown, pasted into docs/benchmarks.md), OUT/results-<init>-sigma<σ>.json and
OUT/per_image.csv (with the σ column).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.checkpoint import load_checkpoint
from models.datasets import read_split
from models.evaluation import (
    CONTROL_METHODS,
    EvaluatedModel,
    EvaluationConfig,
    check_methods,
    decode_batch,
    evaluate_decoded,
    initialise_model,
    iter_batches,
    summarise_rows,
)

# The papers' methods (2023 Tables 2/4; bias from MIDL 2021 Table 2), then the chance-level control.
DEFAULT_METHODS = ",".join(
    [
        "normgrad-scaling-single",
        "normgrad-scaling-combined",
        "normgrad-conv1x1-single",
        "normgrad-conv1x1-combined",
        "normgrad-conv3x3-single",
        "normgrad-conv3x3-combined",
        "normgrad-bias-single",
        "normgrad-bias-combined",
        "gradcam",
        "guided-gradcam",
        "guided-backprop",
        "input-x-grad",
        "random",
    ]
)
INITS = ("trained", "semi-random", "full-random")


def _cell(entry: dict | None) -> str:
    if not entry or entry.get("pointing_game") is None:
        return "–"
    return f"{entry['pointing_game']:.3f} ({entry['hits']}/{entry['n']})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--model", required=True, help="one checkpoint folder")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--inits", default=",".join(INITS))
    p.add_argument("--sigmas", default="0,1")
    p.add_argument("--tau", type=float, default=15.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0 = all)")
    p.add_argument("--time-budget-s", type=float, default=0.0, help="stop after this many seconds (0 = none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--no-channels-last",
        action="store_true",
        help="keep NCHW weights (channels-last is ~15-20%% faster for CPU convolutions)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    methods = tuple(check_methods(args.methods.split(",")))
    sigmas = tuple(float(s) for s in args.sigmas.split(","))
    inits = [s.strip() for s in args.inits.split(",") if s.strip()]
    checkpoint = load_checkpoint(args.model)
    models = [
        EvaluatedModel(
            key=init,
            model=initialise_model(checkpoint, init, args.seed),
            meta=checkpoint.meta,
            init=init,
            seed=args.seed,
            source=args.model,
        )
        for init in inits
    ]
    if not args.no_channels_last:
        for m in models:
            m.model.to(memory_format=torch.channels_last)
    config = EvaluationConfig(
        methods=methods, tau=args.tau, smooth_sigmas=sigmas, batch_size=args.batch_size, seed=args.seed
    )
    samples = read_split(args.data, args.split)
    if args.limit:
        samples = samples[: args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    done = 0
    stopped_early = False
    for chunk in iter_batches(samples, args.batch_size):
        if args.time_budget_s and time.monotonic() - started > args.time_budget_s:
            stopped_early = True
            break
        batch = decode_batch(chunk, args.data)
        batch_rows, _ = evaluate_decoded(batch, models, config)
        rows.extend(batch_rows)
        done += len(chunk)
        print(f"{done}/{len(samples)} images, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started

    with open(out / "per_image.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        fields = [
            "image",
            "model",
            "method",
            "smooth_sigma",
            "label",
            "probability",
            "point_x",
            "point_y",
            "hit",
            "n_boxes",
            "energy_pg",
            "objects_hit",
        ]
        writer.writerow(fields)
        for r in rows:
            writer.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in fields])

    summaries = {}
    archs = {m.key: checkpoint.meta.arch for m in models}
    thresholds = {m.key: checkpoint.meta.threshold for m in models}
    for sigma in sigmas:
        dict_rows = [asdict(r) for r in rows if r.smooth_sigma == sigma]
        summary = summarise_rows(dict_rows, archs, thresholds, method_order=methods)
        summaries[sigma] = summary
        for init in inits:
            (out / f"results-{init}-sigma{sigma:g}.json").write_text(
                json.dumps(
                    {
                        "methods": {m: {init: v[init]} for m, v in summary["methods"].items() if init in v},
                        "classification": {init: summary["classification"].get(init)},
                    },
                    indent=2,
                )
                + "\n"
            )

    columns = [(init, sigma) for init in inits for sigma in sigmas]
    n_pos = sum(1 for s in samples[:done] if s.label == 1 and s.annotations)
    lines = [
        f"Images evaluated: {done} of {len(samples)} ({n_pos} with boxes){' — stopped at the time budget' if stopped_early else ''}; "
        f"τ = {args.tau:g} px on the {checkpoint.meta.input_size[0]}×{checkpoint.meta.input_size[1]} model grid; "
        f"wall time {elapsed:.0f} s on {platform.machine()} CPU, {args.threads} torch thread(s).",
        "",
        "| method | " + " | ".join(f"{init} σ={sigma:g}" for init, sigma in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for m in methods:
        label = f"{m} (control)" if m in CONTROL_METHODS else m
        cells = [_cell(summaries[sigma]["methods"].get(m, {}).get(init)) for init, sigma in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| init | accuracy | ROC AUC |")
    lines.append("|---|---|---|")
    for init in inits:
        c = summaries[sigmas[0]]["classification"].get(init, {})
        acc, auc = c.get("accuracy"), c.get("auc")
        lines.append(f"| {init} | {'–' if acc is None else f'{acc:.3f}'} | {'–' if auc is None else f'{auc:.3f}'} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
