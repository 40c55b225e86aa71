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
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from load_tests.run_load import LOOPBACK, free_port, wait_ready
from load_tests.run_load import base_url as url_of


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


def start_server(args, max_batch_size: int, port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        NORMGATE_HOST=args.host,
        NORMGATE_PORT=str(port),
        NORMGATE_MODELS_DIR=str(args.models_dir),
        NORMGATE_DEFAULT_MODEL=args.model,
        NORMGATE_DEVICE=args.device,
        NORMGATE_MAX_BATCH_SIZE=str(max_batch_size),
        NORMGATE_MAX_BATCH_WAIT_MS=str(args.max_wait_ms),
        NORMGATE_MAX_QUEUE_SIZE="256",
        NORMGATE_REQUEST_TIMEOUT_MS="120000",
        NORMGATE_TORCH_THREADS=str(args.torch_threads),
    )
    env.pop("NORMGATE_API_KEYS", None)
    log = open(args.out.with_suffix(f".server-batch{max_batch_size}.log"), "w")
    return subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


async def drive(
    base_url: str, body: bytes, concurrency: int, max_requests: int, max_seconds: float, heatmap: str
) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    stop_at = time.monotonic() + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < max_requests and time.monotonic() < stop_at:
            issued += 1
            t0 = time.perf_counter()
            response = await client.post(
                "/assess", params={"heatmap": heatmap}, content=body, headers={"content-type": "image/png"}
            )
            elapsed = time.perf_counter() - t0
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                latencies.append(elapsed)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        if not ordered:
            return None
        return round(1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)

    return {
        "concurrency": concurrency,
        "completed": len(latencies),
        "statuses": statuses,
        "seconds": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 2),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
    }


def scrape_histograms(base_url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of every server-side histogram in /metrics, stages kept apart."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text):
        if family.type != "histogram" or family.name == "normgate_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                key = family.name + (f"[{sample.labels['stage']}]" if "stage" in sample.labels else "")
                slot = 0 if sample.name.endswith("_sum") else 1
                totals.setdefault(key, [0.0, 0.0])[slot] += sample.value
    return {key: (v[0], v[1]) for key, v in totals.items()}


def server_means(before: dict, after: dict) -> dict[str, float]:
    """Mean per observation between two scrapes: seconds per stage, batch size, queue wait."""
    means = {}
    for key, (total, count) in after.items():
        total0, count0 = before.get(key, (0.0, 0.0))
        if count > count0:
            means[key.removeprefix("normgate_")] = round((total - total0) / (count - count0), 4)
    return means


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
        port = free_port(args.host)
        base_url = url_of(args.host, port)
        server = start_server(args, max_batch, port)
        try:
            wait_ready(base_url, server, timeout_s=600)
            model = httpx.get(f"{base_url}/models").json()
            asyncio.run(drive(base_url, body, 1, args.warmup, 600, args.heatmap))
            mode = {"max_batch_size": max_batch, "model": model, "levels": []}
            for concurrency in levels:
                before = scrape_histograms(base_url)
                level = asyncio.run(drive(base_url, body, concurrency, args.requests, args.seconds, args.heatmap))
                level["server_means"] = server_means(before, scrape_histograms(base_url))
                mode["levels"].append(level)
                print(
                    f"max_batch={max_batch:>2} concurrency={concurrency:>2} "
                    f"{level['throughput_rps']:>7.2f} req/s  p50 {level['p50_ms']} ms  p95 {level['p95_ms']} ms  "
                    f"p99 {level['p99_ms']} ms  ({level['completed']} ok, statuses {level['statuses']})",
                    flush=True,
                )
                print(f"    server means: {level['server_means']}", flush=True)
            results["modes"].append(mode)
        finally:
            stop_server(server)
    results["load_average_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
