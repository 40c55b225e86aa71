"""Batching study (issue 8; a benchmark, not a test): throughput and p99 of POST /assess for every
max batch wait × max batch size, at fixed offered loads.

One server for the whole grid (no restart per cell): ``--serve`` runs the real app (``create_app``) under
uvicorn on loopback with one extra benchmark-only route, ``POST /_bench/batching``, that sets the model
queue's ``max_batch_size`` and ``max_wait_s`` between cells. The driver sends an open-loop Poisson stream at
each offered load (requests leave on schedule whether or not earlier ones were answered, like modalities
that do not wait for each other) for ``--seconds`` per cell, waits for the stragglers (bounded), and reads the
cell's mean batch size from the /metrics difference. Max batch 1 ignores the wait, so it is one cell per load.

    .venv/bin/python benchmarks/batching_study.py --models-dir artifacts/bench/models --loads 1.5,3 --seconds 15
    .venv/bin/python benchmarks/batching_study.py --waits 0,5,20 --batches 1,4,8 --loads 2   # trimmed grid

Writes JSON and a markdown table (``--out``, ``.md`` beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "load_tests")]

from load_tests.driver import metrics_delta, open_loop, rounded, served, summarise


# -- the server side (python benchmarks/batching_study.py --serve) -------------------------------------------
def serve() -> None:
    import uvicorn
    from fastapi import Query

    from service.app import create_app
    from service.config import Settings

    settings = Settings()
    app = create_app(settings)

    @app.post("/_bench/batching", include_in_schema=False)
    def set_batching(max_batch: int = Query(ge=1), wait_ms: float = Query(ge=0)) -> dict:
        for worker in app.state.registry.workers.values():
            worker.configure_batching(max_batch, wait_ms / 1000.0)
            worker.settings = worker.settings.model_copy(update={"max_batch_size": max_batch})
        return {"max_batch": max_batch, "wait_ms": wait_ms}

    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


# -- the driver ------------------------------------------------------------------------------------------------
def open_loop_cell(
    url: str, bodies: list[bytes], content_type: str, rate: float, seconds: float, seed: int, straggler_s: float
) -> dict:
    """One cell's Poisson stream, under this study's JSON keys."""
    run = open_loop(url, bodies, content_type, rate=rate, seconds=seconds, seed=seed, straggler_s=straggler_s)
    summary = summarise(asyncio.run(run))
    return {
        "sent": summary["requests"],
        "ok": summary["ok"],
        "statuses": summary["statuses"],
        "throughput_rps": rounded(summary["throughput_rps"], 3),
        "wall_s": round(summary["wall_s"], 2),
        "p50_ms": rounded(summary["p50_ms"]),
        "p99_ms": rounded(summary["p99_ms"]),
    }


def cells(waits: list[float], batches: list[int]) -> list[tuple[int, float]]:
    out = []
    for b in batches:
        for w in [waits[0]] if b == 1 else waits:
            out.append((b, w))
    return out


def markdown(results: dict) -> str:
    lines = []
    for load in results["loads"]:
        rows = [c for c in results["cells"] if c["load_rps"] == load]
        lines += [
            f"Offered load {load} req/s ({results['image']}, {results['seconds']} s per cell)",
            "",
            "| max batch | wait ms | throughput (200/s) | p50 ms | p99 ms | mean batch | not 200 |",
            "|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in rows:
            bad = {k: v for k, v in c["statuses"].items() if k != "200"}
            lines.append(
                f"| {c['max_batch']} | {c['wait_ms']:g} | {c['throughput_rps']} | {c['p50_ms']} "
                f"| {c['p99_ms']} | {c['mean_batch']} | {bad or '–'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--models-dir", type=Path, default=REPO / "models" / "checkpoints")
    p.add_argument("--waits", default="0,2,5,10,20")
    p.add_argument("--batches", default="1,4,8,16,32")
    p.add_argument("--loads", default="1.5,3", help="offered loads, requests per second")
    p.add_argument("--seconds", type=float, default=15.0, help="arrivals per cell")
    p.add_argument("--straggler-s", type=float, default=20.0, help="how long to wait for late answers")
    p.add_argument("--image", choices=("png", "dicom"), default="png")
    p.add_argument("--size", default="1024x1024", help="ROWSxCOLS of the images")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--request-timeout-ms", type=float, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "batching_study.json")
    args = p.parse_args()
    if args.serve:
        serve()
        return
    from images import dicom_bytes, png_bytes, radiograph

    rows, cols = (int(v) for v in args.size.split("x"))
    if args.image == "png":
        bodies, content_type = [png_bytes(radiograph(rows, cols, s, bits=8)) for s in range(4)], "image/png"
    else:
        bodies, content_type = [dicom_bytes(radiograph(rows, cols, s), s) for s in range(4)], "application/dicom"
    waits = [float(w) for w in args.waits.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    loads = [float(v) for v in args.loads.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "image": f"{args.image} {rows}x{cols}",
        "seconds": args.seconds,
        "loads": loads,
        "torch_threads": args.torch_threads,
        "models_dir": str(args.models_dir),
        "cells": [],
    }
    import httpx

    with served(
        args.models_dir,
        args.out.with_suffix(".server.log"),
        command=[sys.executable, str(Path(__file__).resolve()), "--serve"],
        max_batch_size=max(batches),
        max_batch_wait_ms=0,
        max_queue_size=256,
        request_timeout_ms=args.request_timeout_ms,
        torch_threads=args.torch_threads,
    ) as server:
        url = server.url
        results["model"] = httpx.get(f"{url}/models").json()
        open_loop_cell(url, bodies, content_type, 1.0, 3, args.seed, args.straggler_s)  # warm
        for load in loads:
            for b, w in cells(waits, batches):
                httpx.post(f"{url}/_bench/batching", params={"max_batch": b, "wait_ms": w}).raise_for_status()
                before = server.scrape()
                # The same seed for every cell of a load: every cell gets the very same arrival times.
                cell = open_loop_cell(url, bodies, content_type, load, args.seconds, args.seed, args.straggler_s)
                server_side = metrics_delta(before, server.scrape())
                cell.update(
                    load_rps=load,
                    max_batch=b,
                    wait_ms=w,
                    mean_batch=server_side["mean_batch_size"],
                    stage_mean_ms=server_side["stage_mean_ms"],
                )
                results["cells"].append(cell)
                print(
                    f"load {load}/s batch {b:>2} wait {w:>4g} ms: {cell['throughput_rps']:>6} req/s "
                    f"p50 {cell['p50_ms']} p99 {cell['p99_ms']} ms mean batch {cell['mean_batch']} "
                    f"{cell['statuses']}",
                    flush=True,
                )
                args.out.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive a cut
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
