"""What a multi-frame cine costs /assess on CPU, against the model's own single-frame pass (a benchmark, not a test).

The goal (issue 18): a 30-frame cine sent as one Enhanced MR DICOM costs ≤ 1.2 × (30 × the single-frame floor),
where the floor is the model's own forward + cut backward for one frame (frozen weights, backward stopped at
the earliest hooked layer, no maps; ``saliency_speed.floor_pass``) timed in this process while the server idles.
The server batches the frames through its queue (up to NORMGATE_MAX_BATCH_SIZE per model step), so the ratio
also shows what batching buys: below 1 when the batched pass per frame is cheaper than the single-frame one.

One server (``python -m service``) with the checkpoint; the cine is a synthetic 4-chamber patient from
``models.synth.cmr`` with exactly ``--frames`` frames, routed by its header (MR, 4-chamber series description).
Each round: the floor for B = 1 and B = max batch size is timed, then ``--requests`` cines are sent one after
the other (one client: a cine alone in the server) and the median end-to-end time is taken.

    nice -n 10 .venv/bin/python benchmarks/cine_cost.py --rounds 3 --out benchmarks/results/cine_cost_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import httpx
import torch
from diy_comparison import timed
from saliency_speed import floor_pass

from load_tests.driver import metrics_delta, start_server


def synthetic_cine(frames: int, seed: int, index: int) -> bytes:
    """One synthetic 4-chamber patient with exactly ``frames`` frames, as an Enhanced MR Part 10 file."""
    from models.synth.cmr.dicom import write_enhanced
    from models.synth.cmr.patient import sample_patient
    from models.synth.cmr.render import CineRenderer

    patient = sample_patient(seed, "test", index, frames_min=frames, frames_max=frames)
    with tempfile.TemporaryDirectory() as folder:
        path = write_enhanced(patient, CineRenderer(patient).frames(), Path(folder) / "cine.dcm")
        return path.read_bytes()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=REPO / "models" / "checkpoints")
    p.add_argument("--model", default="cmr-lvot")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=3, help="cines per round, one at a time")
    p.add_argument("--max-batch-size", type=int, default=8, help="NORMGATE_MAX_BATCH_SIZE of the server")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cine_cost.json")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)

    from models import load_checkpoint
    from models.imaging.decode import decode_image
    from models.imaging.grid import preprocess_batch
    from models.imaging.limits import DecodeLimits
    from models.saliency.hooks import frozen_for_explanation

    body = synthetic_cine(args.frames, args.seed, 0)
    checkpoint = load_checkpoint(args.models_dir / args.model)
    model, meta = checkpoint.model, checkpoint.meta
    decoded = decode_image(body, "application/dicom", DecodeLimits(max_frames=args.frames), multi_frame=True)
    cine = decoded.pixels  # [F, H, W]
    grid = preprocess_batch([cine[i] for i in range(cine.shape[0])], meta.input_size, meta.mean, meta.std)
    assert grid.shape[0] == args.frames, grid.shape

    def floor_ms(batch: int) -> float:
        with frozen_for_explanation(model):
            return timed(lambda: floor_pass(model, grid[:batch], meta.normgrad_layers, meta.positive_index), 3)

    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "torch_threads": args.torch_threads,
        "model": f"{meta.name} {meta.version} ({meta.arch}, {meta.input_size[0]}×{meta.input_size[1]})",
        "cine": f"Enhanced MR, {args.frames} frames of {cine.shape[1]}×{cine.shape[2]}, {len(body)} bytes",
        "max_batch_size": args.max_batch_size,
        "rounds": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with start_server(
        args.models_dir,
        args.out.with_suffix(".server.log"),
        default_model=args.model,  # only so that a folder holding the cardiac model alone starts; DICOM is routed
        max_batch_size=args.max_batch_size,
        max_frames=max(args.frames, 64),
        max_queue_size=max(256, 2 * args.frames),
        request_timeout_ms=300_000,
        torch_threads=args.torch_threads,
    ) as server:
        server.wait_ready(300)
        headers = {"Content-Type": "application/dicom"}
        with httpx.Client(timeout=300) as client:
            warm = client.post(f"{server.url}/assess", content=body, headers=headers)
            warm.raise_for_status()
            answer = warm.json()
            assert answer["model"]["name"] == meta.name, answer["model"]  # routed by the header, not ?model=
            assert len(answer["frames"]) == args.frames
            results["answer"] = {
                "decision": answer["decision"],
                "worst_frame": answer["worst_frame"],
                "frames_reacquire": sum(f["decision"] == "reacquire" for f in answer["frames"]),
            }
            for r in range(args.rounds):
                floor = {1: floor_ms(1), args.max_batch_size: floor_ms(args.max_batch_size)}
                before = server.scrape()
                walls = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    response = client.post(f"{server.url}/assess", content=body, headers=headers)
                    walls.append(1000 * (time.perf_counter() - t0))
                    response.raise_for_status()
                delta = metrics_delta(before, server.scrape())
                wall = statistics.median(walls)
                cell = {
                    "floor_ms": {b: round(v, 1) for b, v in floor.items()},
                    "cine_ms": [round(w, 1) for w in walls],
                    "cine_median_ms": round(wall, 1),
                    "mean_batch": delta["mean_batch_size"],
                    "batches_per_cine": round(delta["batches"] / args.requests, 2),
                    "stage_mean_ms": delta["stage_mean_ms"],
                    "cine_over_frames_x_floor1": round(wall / (args.frames * floor[1]), 3),
                    "cine_over_batched_floor": round(
                        wall / (args.frames / args.max_batch_size * floor[args.max_batch_size]), 3
                    ),
                }
                results["rounds"].append(cell)
                print(
                    f"round {r}: cine {wall:.0f} ms, floor(1) {floor[1]:.1f} ms, floor({args.max_batch_size}) "
                    f"{floor[args.max_batch_size]:.1f} ms, mean batch {cell['mean_batch']}, "
                    f"cine ÷ ({args.frames} × floor(1)) {cell['cine_over_frames_x_floor1']}, "
                    f"cine ÷ batched floor {cell['cine_over_batched_floor']}",
                    flush=True,
                )
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["median"] = {
        key: round(statistics.median(cell[key] for cell in results["rounds"]), 3)
        for key in ("cine_median_ms", "cine_over_frames_x_floor1", "cine_over_batched_floor", "mean_batch")
    }
    results["median"]["floor1_ms"] = round(statistics.median(c["floor_ms"][1] for c in results["rounds"]), 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["median"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
