"""What the out-of-distribution check costs per batch: the serving worker's ModelRunner with and without the
checkpoint's OOD statistics, on the same images, interleaved (docs/benchmarks.md, "OOD check overhead").

With the statistics the runner adds a forward hook on the pooled features for the batch and a Mahalanobis
distance per image (models.ood); there is no second forward pass. Both runners share one model, so the only
difference is the check. Reported: the median time of ``ModelRunner.run`` per batch and the difference, and the
median time of the score computation alone (what the check adds besides the hook).

    .venv/bin/python benchmarks/ood_overhead.py --model models/checkpoints/default --rounds 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.checkpoint import load_checkpoint
from models.imaging.grid import preprocess_batch
from service.observability.metrics import ServiceMetrics
from service.serving.batching import PendingRequest
from service.serving.worker import ModelInput, ModelRunner


def _batch(images: list[torch.Tensor], method: str | None) -> list[PendingRequest]:
    batch = []
    for image in images:
        pending: PendingRequest = PendingRequest(
            payload=ModelInput(image=image, original_hw=(640, 540), method=method), deadline=math.inf
        )
        pending.started_at = pending.enqueued_at
        batch.append(pending)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/checkpoints/default")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.model)
    if checkpoint.ood is None or checkpoint.meta.ood is None:
        raise SystemExit(f"{args.model} has no OOD statistics (python -m models.ood fit)")
    meta = checkpoint.meta
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:640, 0:540] / 640.0
    grays = [
        np.clip(
            0.3 + 0.4 * np.exp(-((rows - 0.5) ** 2 + (cols - 0.4) ** 2) * 4) + rng.normal(0, 0.02, rows.shape), 0, 1
        ).astype(np.float32)
        for _ in range(args.batch_size)
    ]
    images = list(preprocess_batch(grays, meta.input_size, meta.mean, meta.std))
    with_check = ModelRunner("with", checkpoint.model, meta, torch.device("cpu"), ServiceMetrics(), ood=checkpoint.ood)
    plain_meta = meta.model_copy(update={"ood": None})
    without = ModelRunner("without", checkpoint.model, plain_meta, torch.device("cpu"), ServiceMetrics())
    results = {}
    for method in ("normgrad-conv1x1-combined", None):
        times: dict[str, list[float]] = {"with": [], "without": []}
        for runner in (with_check, without):  # warm-up
            runner.run(_batch(images, method))
        for _ in range(args.rounds):
            for name, runner in (("with", with_check), ("without", without)):
                started = time.perf_counter()
                outputs = runner.run(_batch(images, method))
                times[name].append(time.perf_counter() - started)
                assert (outputs[0].ood_score is not None) == (name == "with")
        median_with, median_without = statistics.median(times["with"]), statistics.median(times["without"])
        results[method or "heatmap=none"] = {
            "median_ms_with_check": round(median_with * 1000, 2),
            "median_ms_without": round(median_without * 1000, 2),
            "overhead_ms": round((median_with - median_without) * 1000, 2),
            "overhead_percent": round(100 * (median_with / median_without - 1), 1),
        }
    # The work the check adds, alone: the Mahalanobis distances of one batch of pooled features.
    features = np.random.default_rng(1).random((args.batch_size, checkpoint.ood.dimension))
    score_times = []
    for _ in range(200):
        started = time.perf_counter()
        checkpoint.ood.score(features)
        score_times.append(time.perf_counter() - started)
    summary = {"model": args.model, "batch_size": args.batch_size, "rounds": args.rounds, "threads": args.threads}
    summary["score_ms_per_batch"] = round(statistics.median(score_times) * 1000, 3)
    summary["results"] = results
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
