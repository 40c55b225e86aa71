"""Side by side, in one run, on the same images and the same checkpoint (issue 8; a benchmark, not a test):

* ``normgate``  — POST /assess of the real server (``python -m service``: decode pool, dynamic batching,
  one forward + cut backward per batch, NormGrad conv1x1-combined);
* ``diy``       — the obvious do-it-yourself service (benchmarks/diy_service.py): FastAPI, no batching,
  pydicom + PIL resize, captum LayerGradCam or a naive NormGrad (weights requiring grad, full backward);
* ``loop``      — the papers' per-image loop, in this process: each image decoded and PIL-resized on its own,
  then one forward + full backward per image (the DIY functions, no HTTP);
* ``floor``     — the model's own forward + cut backward (``floor_pass``) on an
  already preprocessed batch of B images, B = 1 … 4, and ``engine`` = ``explain()`` on the same batch.

Each round runs every candidate once, in the same order, so a busy shared machine slows all of them alike;
the report gives per-round ratios and their median. The goal of issue 8 is checked in the same run: at
concurrency 4, NormGate's wall time per batch against the floor at the batch size the server actually formed
(mean batch size from /metrics, the floor linear between integer sizes), and p50 latency against floor(4).

    .venv/bin/python benchmarks/diy_comparison.py --models-dir artifacts/bench/models --rounds 3
    .venv/bin/python benchmarks/diy_comparison.py --dicom-size 2500x3000 --requests 16 --torch-threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "load_tests"), str(REPO / "benchmarks")]

import torch
from images import dicom_bytes, radiograph
from saliency_speed import floor_pass

from load_tests.driver import (
    base_url,
    closed_loop,
    free_port,
    launch,
    metrics_delta,
    rounded,
    start_server,
    summarise,
)


def closed_loop_cell(
    url: str, bodies: list[bytes], concurrency: int, requests: int, seconds: float, params: dict
) -> dict:
    """``concurrency`` closed-loop clients sending the DICOM ``bodies`` round robin, under this benchmark's JSON
    keys (goal_ratio.py writes the same cells)."""
    run = closed_loop(
        url,
        bodies,
        "application/dicom",
        clients=concurrency,
        requests=requests,
        seconds=seconds,
        params=params,
    )
    summary = summarise(asyncio.run(run))
    return {
        "concurrency": concurrency,
        "ok": summary["ok"],
        "statuses": summary["statuses"],
        "wall_s": round(summary["wall_s"], 2),
        "throughput_rps": rounded(summary["throughput_rps"], 3),
        "p50_ms": rounded(summary["p50_ms"]),
        "p95_ms": rounded(summary["p95_ms"]),
        "mean_ms": rounded(summary["mean_ms"]),
    }


def timed(fn, reps: int) -> float:
    """Median wall ms of ``reps`` calls (after one unmeasured call)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=REPO / "models" / "checkpoints")
    p.add_argument("--model", default="default")
    p.add_argument("--images", type=int, default=4, help="distinct DICOM images, reused round robin")
    p.add_argument("--dicom-size", default="2500x3000")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=16, help="requests per service per concurrency per round")
    p.add_argument("--loop-images", type=int, default=4, help="images through the per-image loop per round")
    p.add_argument("--seconds", type=float, default=90, help="cap per service cell")
    p.add_argument("--concurrency", default="4,1")
    p.add_argument("--torch-threads", type=int, default=1, help="intra-op threads, same for every candidate")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-batch-wait-ms", type=float, default=5)
    p.add_argument("--floor-reps", type=int, default=3)
    p.add_argument("--gradcam", action="store_true", help="also compare method=gradcam (captum in the DIY)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "diy_comparison.json")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.torch_threads)

    import diy_service

    from models.imaging.decode import decode_image
    from models.imaging.grid import preprocess_batch
    from models.imaging.limits import DecodeLimits
    from models.saliency import explain
    from models.saliency.hooks import frozen_for_explanation

    rows, cols = (int(v) for v in args.dicom_size.split("x"))
    bodies = [dicom_bytes(radiograph(rows, cols, seed=s), s) for s in range(args.images)]
    folder = args.models_dir / args.model
    model, meta = diy_service.load(folder)  # weights requiring grad: the DIY/loop model
    frozen_model, _ = diy_service.load(folder)
    layers = list(meta.normgrad_layers)
    limits = DecodeLimits(max_pixels=60_000_000)
    grid = preprocess_batch(
        [decode_image(b, "application/dicom", limits).pixels for b in bodies], meta.input_size, meta.mean, meta.std
    )
    levels = [int(c) for c in args.concurrency.split(",")]

    logs = args.out.with_suffix("")
    diy_port = free_port()
    diy_command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(REPO / "benchmarks"),
        "diy_service:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(diy_port),
        "--log-level",
        "warning",
    ]
    diy_env = dict(os.environ, DIY_CHECKPOINT=str(folder), OMP_NUM_THREADS=str(args.torch_threads))
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "torch_threads": args.torch_threads,
        "checkpoint": str(folder),
        "version": meta.version,
        "arch": meta.arch,
        "input_size": meta.input_size,
        "image": f"16-bit DICOM {rows}x{cols}",
        "rounds": [],
    }
    with (
        start_server(
            args.models_dir,
            Path(f"{logs}.normgate.log"),
            default_model=args.model,
            max_batch_size=args.max_batch_size,
            max_batch_wait_ms=args.max_batch_wait_ms,
            max_queue_size=256,
            request_timeout_ms=300_000,
            torch_threads=args.torch_threads,
        ) as ng,
        launch(diy_command, base_url("127.0.0.1", diy_port), Path(f"{logs}.diy.log"), diy_env) as diy,
    ):
        ng.wait_ready()
        diy.wait_ready()
        for url in (ng.url, diy.url):  # warm both (first requests pay for lazy initialisation)
            closed_loop_cell(url, bodies, 1, 2, 120, {})
        for r in range(args.rounds):
            rnd: dict = {"floor_ms": {}, "engine_ms": {}}
            with frozen_for_explanation(frozen_model):
                for b in range(1, 5):
                    x = grid[[i % len(grid) for i in range(b)]]
                    rnd["floor_ms"][b] = round(
                        timed(lambda: floor_pass(frozen_model, x, layers, meta.positive_index), args.floor_reps), 1
                    )
            for b in (1, 4):
                x = grid[[i % len(grid) for i in range(b)]]
                rnd["engine_ms"][b] = round(
                    timed(lambda: explain(frozen_model, x, target=meta.positive_index, layers=layers), args.floor_reps),
                    1,
                )
            for c in levels:
                before = ng.scrape()
                cell = closed_loop_cell(ng.url, bodies, c, args.requests, args.seconds, {})
                cell["server"] = metrics_delta(before, ng.scrape())
                rnd[f"normgate_c{c}"] = cell
                rnd[f"diy_c{c}"] = closed_loop_cell(
                    diy.url, bodies, c, args.requests, args.seconds, {"method": "normgrad"}
                )
            if args.gradcam:
                rnd["normgate_gradcam_c4"] = closed_loop_cell(
                    ng.url, bodies, 4, args.requests, args.seconds, {"method": "gradcam"}
                )
                rnd["diy_gradcam_c4"] = closed_loop_cell(
                    diy.url, bodies, 4, args.requests, args.seconds, {"method": "gradcam"}
                )
            loop_ms = []
            started = time.perf_counter()
            for i in range(args.loop_images):
                t0 = time.perf_counter()
                diy_service.assess_one(model, meta, bodies[i % len(bodies)], "normgrad")
                loop_ms.append(1000 * (time.perf_counter() - t0))
            rnd["loop"] = {
                "images": len(loop_ms),
                "throughput_rps": round(len(loop_ms) / (time.perf_counter() - started), 3),
                "p50_ms": rounded(statistics.median(loop_ms)),
                "mean_ms": rounded(statistics.fmean(loop_ms)),
            }
            rnd["ratios"] = ratios(rnd, levels)
            results["rounds"].append(rnd)
            print(json.dumps({"round": r, **rnd["ratios"]}), flush=True)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["median_ratios"] = {
        k: round(statistics.median(rr["ratios"][k] for rr in results["rounds"] if rr["ratios"].get(k) is not None), 3)
        for k in results["rounds"][0]["ratios"]
        if any(rr["ratios"].get(k) is not None for rr in results["rounds"])
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["median_ratios"], indent=2))
    print(f"wrote {args.out}")


def ratios(rnd: dict, levels: list[int]) -> dict:
    out: dict = {}
    for c in levels:
        ng, diy = rnd[f"normgate_c{c}"], rnd[f"diy_c{c}"]
        out[f"throughput normgate/diy c{c}"] = _div(ng["throughput_rps"], diy["throughput_rps"])
        out[f"throughput normgate/loop c{c}"] = _div(ng["throughput_rps"], rnd["loop"]["throughput_rps"])
        out[f"p50 diy/normgate c{c}"] = _div(diy["p50_ms"], ng["p50_ms"])
    if "normgate_c4" in rnd:
        cell = rnd["normgate_c4"]
        batch = cell["server"]["mean_batch_size"] or 1
        floor_b = floor_at(rnd["floor_ms"], batch)
        out["c4 mean batch"] = batch
        out["c4 floor ms (mean batch)"] = round(floor_b, 1)
        # Service time per batch: wall clock of the run divided by the batches it took, against the model's own
        # pass at the same (mean) batch size: the goal's ratio.
        batches = cell["server"]["batches"] or 1
        out["goal: c4 wall per batch / floor(mean batch)"] = _div(1000 * cell["wall_s"] / batches, floor_b)
        # Per request: 4 closed-loop clients keep 4 requests in the server, so a request's latency is at best
        # the model's time for all four, floor(4), however they are batched.
        out["c4 p50 / floor(4)"] = _div(cell["p50_ms"], rnd["floor_ms"][4])
    if "normgate_gradcam_c4" in rnd:
        out["gradcam throughput normgate/diy c4"] = _div(
            rnd["normgate_gradcam_c4"]["throughput_rps"], rnd["diy_gradcam_c4"]["throughput_rps"]
        )
    return out


def floor_at(floor: dict[int, float], batch: float) -> float:
    """The floor at a fractional mean batch size, linear between the integer sizes around it (on CPU the
    model's time is affine in the batch size, so this is the floor of the batches the server actually ran)."""
    low = max(1, min(int(batch), max(floor) - 1))
    return floor[low] + (batch - low) * (floor[low + 1] - floor[low])


def _div(a, b):
    return round(a / b, 3) if a is not None and b else None


if __name__ == "__main__":
    main()
