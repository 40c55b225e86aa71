"""Issue 8's CPU goal, measured on its own: at concurrency 4, end-to-end /assess time against the model's own
forward + cut backward for the same batch (a benchmark, not a test).

One NormGate server per configuration (``--configs DECODE_WORKERS:DECODE_NICE,...``: how many threads decode
uploads next to the model, and at what niceness), all started at once. Every round, for every server: the
floor for B = 1…4 is timed in this process (servers idle), then 4 closed-loop clients send 16-bit DICOM
images. Per cell it reports the server's mean batch size B̄ (from /metrics) and, against floor(B̄) (linear
between the neighbouring integer batch sizes, since ``floor`` is affine in B on CPU):

* wall per batch ÷ floor(B̄): the goal's ratio (what the server adds to the model, all causes together);
* the server's own forward_backward stage ÷ floor(B̄): the model step inside the server (contention);
* p50 ÷ floor(4): per request, against the batch the four clients would share if they arrived together.

    .venv/bin/python benchmarks/goal_ratio.py --models-dir artifacts/bench/models --rounds 5
    # against an earlier commit, interleaved on the same machine:
    git archive COMMIT | tar -x -C /path/to/base && .venv/bin/python benchmarks/goal_ratio.py --configs 1:10 \
        --baseline-checkout /path/to/base
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "load_tests"), str(REPO / "benchmarks")]

import torch
from diy_comparison import closed_loop_cell, floor_at, timed
from images import dicom_bytes, radiograph
from saliency_speed import floor_pass

from load_tests.driver import metrics_delta, start_server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=REPO / "models" / "checkpoints")
    p.add_argument("--model", default="default")
    p.add_argument(
        "--configs", default="1:10,2:10,2:0", help="comma-separated DECODE_WORKERS:DECODE_NICE server configurations"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--dicom-size", default="2500x3000")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument(
        "--baseline-checkout",
        type=Path,
        help="another checkout (e.g. a `git archive` of an earlier commit): its `python -m service` runs with the "
        "first configuration as one more server, cells interleaved round by round with this checkout's",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "goal_ratio.json")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)

    from models import load_checkpoint
    from models.imaging.decode import decode_image
    from models.imaging.grid import preprocess_batch
    from models.imaging.limits import DecodeLimits
    from models.saliency.hooks import frozen_for_explanation

    rows, cols = (int(v) for v in args.dicom_size.split("x"))
    bodies = [dicom_bytes(radiograph(rows, cols, seed=s), s) for s in range(4)]
    checkpoint = load_checkpoint(args.models_dir / args.model)
    model, meta = checkpoint.model, checkpoint.meta
    grid = preprocess_batch(
        [decode_image(b, "application/dicom", DecodeLimits(max_pixels=60_000_000)).pixels for b in bodies],
        meta.input_size,
        meta.mean,
        meta.std,
    )
    configs = [tuple(int(x) for x in v.split(":")) for v in args.configs.split(",")]
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "torch_threads": args.torch_threads,
        "image": f"16-bit DICOM {rows}x{cols}",
        "rounds": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as running:

        def server(name: str, workers: int, nice: int, command: tuple[str, ...] | None = None):
            extra = {"command": command} if command else {}
            return running.enter_context(
                start_server(
                    args.models_dir,
                    args.out.with_suffix(f".{name}.log"),
                    default_model=args.model,
                    max_queue_size=256,
                    request_timeout_ms=300_000,
                    torch_threads=args.torch_threads,
                    decode_workers=workers,
                    decode_nice=nice,
                    **extra,
                )
            )

        servers = {
            f"decode_workers={workers},nice={nice}": server(f"dw{workers}n{nice}", workers, nice)
            for workers, nice in configs
        }  # all started at once: they load their models side by side
        if args.baseline_checkout:
            root = str(args.baseline_checkout.resolve())
            code = f"import sys, runpy; sys.path.insert(0, {root!r}); runpy.run_module('service', run_name='__main__')"
            servers[f"baseline {args.baseline_checkout.name}"] = server(
                "baseline", *configs[0], command=(sys.executable, "-c", code)
            )
        for server in servers.values():
            server.wait_ready()
            closed_loop_cell(server.url, bodies, 1, 2, 120, {})
        for r in range(args.rounds):
            rnd = {"cells": {}}
            for name, server in servers.items():
                # The floor right before each cell, so a change in the machine's other load hits both alike.
                with frozen_for_explanation(model):
                    floor = {
                        b: timed(
                            lambda: floor_pass(
                                model, grid[[i % 4 for i in range(b)]], meta.normgrad_layers, meta.positive_index
                            ),
                            3,
                        )
                        for b in range(1, 5)
                    }
                before = server.scrape()
                cell = closed_loop_cell(server.url, bodies, args.concurrency, args.requests, 300, {})
                delta = metrics_delta(before, server.scrape())
                batch = delta["mean_batch_size"] or 1.0
                floor_b = floor_at(floor, batch)
                per_batch_ms = 1000 * cell["wall_s"] / max(1, delta["batches"])
                model_step_ms = delta["stage_mean_ms"].get("forward_backward") or float("nan")
                cell.update(
                    floor_ms={b: round(v, 1) for b, v in floor.items()},
                    mean_batch=batch,
                    floor_at_mean_batch_ms=round(floor_b, 1),
                    stage_mean_ms=delta["stage_mean_ms"],
                    wall_per_batch_over_floor=round(per_batch_ms / floor_b, 3),
                    model_step_over_floor=round(model_step_ms / floor_b, 3),
                    p50_over_floor_4=round(cell["p50_ms"] / floor[4], 3),
                )
                rnd["cells"][name] = cell
                print(
                    f"round {r} {name}: {cell['throughput_rps']} req/s, mean batch {batch}, floor(B̄) "
                    f"{floor_b:.0f} ms, wall/batch÷floor {cell['wall_per_batch_over_floor']}, model step÷floor "
                    f"{cell['model_step_over_floor']}, p50÷floor(4) {cell['p50_over_floor_4']}",
                    flush=True,
                )
            results["rounds"].append(rnd)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["median"] = {
        name: {
            key: round(statistics.median(rr["cells"][name][key] for rr in results["rounds"]), 3)
            for key in (
                "throughput_rps",
                "mean_batch",
                "wall_per_batch_over_floor",
                "model_step_over_floor",
                "p50_over_floor_4",
            )
        }
        for name in results["rounds"][0]["cells"]
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["median"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
