"""Throughput and latency of POST /assess, with dynamic batching on and off (a benchmark, not a test).

Starts the real server (``python -m service``) on a loopback port for each batching mode, waits for /readyz,
then drives /assess with httpx at each concurrency level: every client sends one request after another, for
a bounded number of requests or seconds, whichever ends first. Reports completed requests per second and
p50/p95/p99 of the client-side latency, and writes them as JSON.

    .venv/bin/python benchmarks/assess_latency.py                       # default checkpoint, 1/4/16 clients
    .venv/bin/python benchmarks/assess_latency.py --models-dir DIR --requests 64 --seconds 60 --heatmap none
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from load_tests.driver import LOOPBACK, closed_loop, histogram_means, rounded, served, summarise


def synthetic_radiograph(height: int, width: int, seed: int = 0) -> bytes:
    """A 16-bit grayscale PNG the size of a real chest radiograph (decode and resize cost included)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(-1, 1, height)[:, None]
    cols = np.linspace(-1, 1, width)[None, :]
    body = np.exp(-(rows**2 * 1.5 + cols**2 * 2.5))
    image = 8000 + 40000 * body + rng.normal(0, 600, (height, width))
    image[height // 3 : height // 3 + 40, width // 2 : width // 2 + 40] = 65535  # a bright 'object'
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 65535).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


async def drive(
    base_url: str, body: bytes, concurrency: int, max_requests: int, max_seconds: float, heatmap: str
) -> dict:
    """One concurrency level: closed-loop clients, summarised under this benchmark's JSON keys."""
    run = await closed_loop(
        base_url,
        [body],
        "image/png",
        clients=concurrency,
        requests=max_requests,
        seconds=max_seconds,
        params={"heatmap": heatmap},
    )
    summary = summarise(run)
    return {
        "concurrency": concurrency,
        "completed": summary["ok"],
        "statuses": summary["statuses"],
        "seconds": round(summary["wall_s"], 2),
        "throughput_rps": rounded(summary["throughput_rps"], 2),
        "p50_ms": rounded(summary["p50_ms"]),
        "p95_ms": rounded(summary["p95_ms"]),
        "p99_ms": rounded(summary["p99_ms"]),
        "mean_ms": rounded(summary["mean_ms"]),
    }


def server_means(before: str, after: str) -> dict[str, float]:
    """Mean per observation of every server-side histogram between two scrapes (stages kept apart)."""
    return {key: round(mean, 4) for key, mean in histogram_means(before, after).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models" / "checkpoints")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--host", default="127.0.0.1", help="loopback only")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--batch-sizes", default="8,1", help="max batch sizes to compare (1 = batching off)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--torch-threads", type=int, default=0, help="NORMGATE_TORCH_THREADS (0: torch default)")
    parser.add_argument("--requests", type=int, default=64, help="at most this many requests per level")
    parser.add_argument("--seconds", type=float, default=60.0, help="at most this long per level")
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured requests before each mode")
    parser.add_argument("--image-size", default="2500x2048", help="HxW of the synthetic 16-bit PNG")
    parser.add_argument("--image", type=Path, help="a PNG to send instead of the synthetic one")
    parser.add_argument("--heatmap", choices=("png", "none"), default="png")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "assess_latency.json")
    args = parser.parse_args()
    if args.host not in LOOPBACK:
        raise SystemExit("--host must be a loopback address")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.image:
        body = args.image.read_bytes()
    else:
        h, w = (int(v) for v in args.image_size.lower().split("x"))
        body = synthetic_radiograph(h, w)
    levels = [int(c) for c in args.concurrency.split(",")]
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "image_bytes": len(body),
        "heatmap": args.heatmap,
        "max_wait_ms": args.max_wait_ms,
        "torch_threads": args.torch_threads,
        "modes": [],
    }
    for max_batch in (int(b) for b in args.batch_sizes.split(",")):
        with served(
            args.models_dir,
            args.out.with_suffix(f".server-batch{max_batch}.log"),
            ready_timeout_s=600,
            host=args.host,
            default_model=args.model,
            device=args.device,
            max_batch_size=max_batch,
            max_batch_wait_ms=args.max_wait_ms,
            max_queue_size=256,
            request_timeout_ms=120_000,
            torch_threads=args.torch_threads,
        ) as server:
            model = httpx.get(f"{server.url}/models").json()
            asyncio.run(drive(server.url, body, 1, args.warmup, 600, args.heatmap))
            mode = {"max_batch_size": max_batch, "model": model, "levels": []}
            for concurrency in levels:
                before = server.scrape()
                level = asyncio.run(drive(server.url, body, concurrency, args.requests, args.seconds, args.heatmap))
                level["server_means"] = server_means(before, server.scrape())
                mode["levels"].append(level)
                print(
                    f"max_batch={max_batch:>2} concurrency={concurrency:>2} "
                    f"{level['throughput_rps']:>7.2f} req/s  p50 {level['p50_ms']} ms  p95 {level['p95_ms']} ms  "
                    f"p99 {level['p99_ms']} ms  ({level['completed']} ok, statuses {level['statuses']})",
                    flush=True,
                )
                print(f"    server means: {level['server_means']}", flush=True)
            results["modes"].append(mode)
    results["load_average_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
