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
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "load_tests")]

from load_tests.run_load import (
    base_url,
    free_port,
    metrics_delta,
    percentile,
    scrape,
    server_env,
    stop_process,
    wait_ready,
)


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
async def open_loop(
    url: str, bodies: list[tuple[bytes, str]], rate: float, seconds: float, seed: int, straggler_s: float
) -> dict:
    import httpx

    rng = random.Random(seed)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=straggler_s + seconds, limits=limits) as client:

        async def one(body: bytes, content_type: str) -> None:
            t0 = time.perf_counter()
            try:
                response = await client.post("/assess", content=body, headers={"content-type": content_type})
                key = str(response.status_code)
            except Exception as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            if key == "200":
                latencies.append(1000 * (time.perf_counter() - t0))

        tasks = []
        started = time.perf_counter()
        next_at = started
        i = 0
        while next_at - started < seconds:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body, content_type = bodies[i % len(bodies)]
            tasks.append(asyncio.create_task(one(body, content_type)))
            i += 1
            next_at += rng.expovariate(rate)
        _, pending = await asyncio.wait(tasks, timeout=straggler_s) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        if pending:
            statuses["abandoned"] = len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - started
    return {
        "sent": i,
        "ok": len(latencies),
        "statuses": dict(sorted(statuses.items())),
        "throughput_rps": round(len(latencies) / wall, 3),
        "wall_s": round(wall, 2),
        "p50_ms": _r(percentile(latencies, 0.5)),
        "p99_ms": _r(percentile(latencies, 0.99)),
    }


def _r(v):
    return None if v is None else round(v, 1)


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
        bodies = [(png_bytes(radiograph(rows, cols, s, bits=8)), "image/png") for s in range(4)]
    else:
        bodies = [(dicom_bytes(radiograph(rows, cols, s), s), "application/dicom") for s in range(4)]
    waits = [float(w) for w in args.waits.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    loads = [float(v) for v in args.loads.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = base_url("127.0.0.1", port)
    env = server_env(
        args.models_dir,
        port,
        max_batch_size=max(batches),
        max_batch_wait_ms=0,
        max_queue_size=256,
        request_timeout_ms=args.request_timeout_ms,
        torch_threads=args.torch_threads,
    )
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

    server = None
    try:
        log = open(args.out.with_suffix(".server.log"), "w")
        server = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_ready(url, server)
        results["model"] = httpx.get(f"{url}/models").json()
        asyncio.run(open_loop(url, bodies, 1.0, 3, args.seed, args.straggler_s))  # warm
        for load in loads:
            for b, w in cells(waits, batches):
                httpx.post(f"{url}/_bench/batching", params={"max_batch": b, "wait_ms": w}).raise_for_status()
                before = scrape(url)
                # The same seed for every cell of a load: every cell gets the very same arrival times.
                cell = asyncio.run(open_loop(url, bodies, load, args.seconds, args.seed, args.straggler_s))
                server_side = metrics_delta(before, scrape(url))
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
    finally:
        stop_process(server)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
