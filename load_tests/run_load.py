"""Run a Locust scenario against a NormGate server it starts on loopback, and summarise it.

Starts ``python -m service`` with the given settings on a free loopback port, waits for /readyz, scrapes
/metrics, runs Locust headless for a bounded time (killed if it overstays), scrapes /metrics again and writes

* ``OUT/summary.json`` — settings, per request name (count, failures, p50/p95/p99 from Locust, status codes),
  the valid traffic's throughput and exact p50/p95/p99 over every 200 answer, errors by status, and from the
  /metrics difference: mean batch size (``normgate_batch_size`` sum/count), mean queue wait, mean time per
  compute stage, rejections by reason;
* ``OUT/summary.md`` — the same as markdown tables;
* Locust's CSVs and both servers' logs next to them.

    .venv/bin/python load_tests/run_load.py --scenario steady --users 4 --seconds 60
    .venv/bin/python load_tests/run_load.py --scenario burst --seconds 120 --peak 12 --max-batch-size 8
    .venv/bin/python load_tests/run_load.py --models-dir artifacts/bench/models --out artifacts/load/steady

Only loopback addresses; the server and Locust are stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from load_tests.driver import (
    LOOPBACK,
    metrics_delta,
    percentile,
    rounded,
    served,
    start_process,
    stop_process,
)

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# Requests whose correct answer is a 4xx: left out of the valid traffic's throughput and latency.
BAD_PREFIX = "/assess [bad"


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def parse_locust_stats(text: str) -> list[dict]:
    """Locust's ``*_stats.csv`` → one dict per row (name, type, count, failures, p50/p95/p99 ms, rps)."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append(
            {
                "type": row.get("Type", ""),
                "name": row["Name"],
                "count": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50_ms": _number(row.get("50%")),
                "p95_ms": _number(row.get("95%")),
                "p99_ms": _number(row.get("99%")),
                "mean_ms": _number(row.get("Average Response Time")),
                "rps": _number(row.get("Requests/s")),
            }
        )
    return rows


def summarise(
    stats_csv: str, statuses: dict, metrics_before: str, metrics_after: str, settings: dict, scenario: dict
) -> dict:
    """Everything a run says, as one JSON-able dict.

    ``statuses`` is what the locustfile writes: {"counts": {name: {status: n}}, "samples": {name: [[status,
    ms], ...]}} (older files: just the counts mapping).
    """
    rows = parse_locust_stats(stats_csv)
    counts = statuses.get("counts", statuses) if isinstance(statuses, dict) else {}
    samples = statuses.get("samples", {}) if isinstance(statuses, dict) else {}
    aggregated = next((r for r in rows if r["name"] == "Aggregated"), None)
    per_name = [r for r in rows if r["name"] != "Aggregated"]
    for row in per_name:
        row["statuses"] = dict(sorted(counts.get(row["name"], {}).items()))
    valid = [r for r in per_name if not r["name"].startswith(BAD_PREFIX)]
    ok_count = (
        sum(int(r["statuses"].get("200", 0)) for r in valid)
        if counts
        else sum(r["count"] - r["failures"] for r in valid)
    )
    duration_s = (aggregated["count"] / aggregated["rps"]) if aggregated and aggregated["rps"] else None
    ok_ms = [
        ms
        for name, pairs in samples.items()
        if not name.startswith(BAD_PREFIX)
        for status, ms in pairs
        if str(status) == "200"
    ]
    by_status: dict[str, int] = {}
    for _name, per in counts.items():
        for status, n in per.items():
            by_status[status] = by_status.get(status, 0) + int(n)
    unexpected: dict[str, int] = {}
    for row in per_name:
        expected = "200" if not row["name"].startswith(BAD_PREFIX) else None
        for status, n in row["statuses"].items():
            if (expected and status != expected) or (not expected and not status.startswith("4")):
                unexpected[status] = unexpected.get(status, 0) + int(n)
    return {
        "scenario": scenario,
        "settings": settings,
        "duration_s": round(duration_s, 2) if duration_s else None,
        "requests": aggregated["count"] if aggregated else sum(r["count"] for r in per_name),
        "locust_failures": aggregated["failures"] if aggregated else sum(r["failures"] for r in per_name),
        "valid": {
            "ok": ok_count,
            "throughput_rps": round(ok_count / duration_s, 3) if duration_s else None,
            "p50_ms": rounded(percentile(ok_ms, 0.50)),
            "p95_ms": rounded(percentile(ok_ms, 0.95)),
            "p99_ms": rounded(percentile(ok_ms, 0.99)),
            "max_ms": rounded(max(ok_ms)) if ok_ms else None,
        },
        "statuses": dict(sorted(by_status.items())),
        "unexpected_statuses": dict(sorted(unexpected.items())),
        "per_request": per_name,
        "server": metrics_delta(metrics_before, metrics_after),
    }


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e6 else f"{value:.3e}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "–"
    return str(value)


def markdown(summary: dict) -> str:
    """The summary as markdown: one headline table, one row per request name, the server's view."""
    v, s = summary["valid"], summary["server"]
    lines = [
        f"Scenario: {_cell(summary['scenario'])}  ",
        f"Settings: {_cell(summary['settings'])}",
        "",
        "| throughput (200/s) | p50 ms | p95 ms | p99 ms | requests | statuses | unexpected | mean batch |"
        " queue wait ms |",
        "|---:|---:|---:|---:|---:|---|---|---:|---:|",
        f"| {_cell(v['throughput_rps'])} | {_cell(v['p50_ms'])} | {_cell(v['p95_ms'])} | {_cell(v['p99_ms'])} "
        f"| {summary['requests']} | {_cell(summary['statuses'])} | {_cell(summary['unexpected_statuses'])} "
        f"| {_cell(s['mean_batch_size'])} | {_cell(s['mean_queue_wait_ms'])} |",
        "",
        "| request | count | failures | p50 ms | p95 ms | p99 ms | statuses |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in summary["per_request"]:
        lines.append(
            f"| {row['name']} | {row['count']} | {row['failures']} | {_cell(row['p50_ms'])} "
            f"| {_cell(row['p95_ms'])} | {_cell(row['p99_ms'])} | {_cell(row['statuses'])} |"
        )
    lines += [
        "",
        f"Server stage means (ms): {_cell(s['stage_mean_ms'])}; batches: {s['batches']}; "
        f"rejected: {_cell(s['rejected'])}",
        "",
    ]
    return "\n".join(lines)


# -- one run ----------------------------------------------------------------------------------------------------
def locust_command(
    scenario: str, url: str, users: int, spawn_rate: float, seconds: float, csv_prefix: Path
) -> list[str]:
    locust = Path(sys.executable).with_name("locust")
    file = HERE / ("burst.py" if scenario == "burst" else "locustfile.py")
    cmd = [
        str(locust),
        "-f",
        str(file),
        "--headless",
        "--host",
        url,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--stop-timeout",
        "30",
        "--loglevel",
        "WARNING",
        "-t",
        f"{math.ceil(seconds)}s",
    ]
    if scenario != "burst":
        cmd += ["-u", str(users), "-r", str(spawn_rate)]
    return cmd


def run(args: argparse.Namespace) -> dict:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "max_batch_size": args.max_batch_size,
        "max_batch_wait_ms": args.max_batch_wait_ms,
        "max_queue_size": args.max_queue_size,
        "request_timeout_ms": args.request_timeout_ms,
        "decode_workers": args.decode_workers,
        "torch_threads": args.torch_threads,
    }
    locust = profiler = None
    with served(args.models_dir, out / "server.log", host=args.host, device=args.device, **settings) as server:
        try:
            before = server.scrape()
            if args.profile:
                # Sample the server while Locust runs: collapsed stacks per thread (load_tests/profile_report.py).
                profiler = start_process(
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        "record",
                        "-p",
                        str(server.process.pid),
                        "-r",
                        "50",
                        "--threads",
                        "--nonblocking",
                        "-f",
                        "raw",
                        "-o",
                        str(out / "profile.raw"),
                        "-d",
                        str(int(args.seconds) + 5),
                    ],
                    out / "py-spy.log",
                )
            status_path = out / "statuses.json"
            locust_env = dict(
                os.environ,
                NORMGATE_LOAD_STATUS_OUT=str(status_path),
                NORMGATE_BURST_SECONDS=str(args.seconds),
                NORMGATE_BURST_PEAK=str(args.peak),
                NORMGATE_BURST_BASE=str(args.base),
                NORMGATE_LOAD_THINK_S=args.think,
                NORMGATE_LOAD_DICOM_SIZE=args.dicom_size,
                NORMGATE_LOAD_PNG_SIZE=args.png_size,
            )
            cmd = locust_command(args.scenario, server.url, args.users, args.spawn_rate, args.seconds, out / "locust")
            started = time.monotonic()
            locust = start_process(cmd, out / "locust.log", locust_env)
            try:
                locust.wait(args.seconds + 120)  # payload building + stop timeout; then it is cut off
            except subprocess.TimeoutExpired:
                stop_process(locust, grace_s=10)
            wall = time.monotonic() - started
            after = server.scrape()
            if profiler is not None:
                try:
                    profiler.wait(30)
                except subprocess.TimeoutExpired:
                    stop_process(profiler, grace_s=10)
            statuses = json.loads(status_path.read_text()) if status_path.exists() else {}
            stats_csv = (out / "locust_stats.csv").read_text()
        finally:
            stop_process(profiler, grace_s=10)
            stop_process(locust, grace_s=10)
    scenario = {
        "name": args.scenario,
        "users": None if args.scenario == "burst" else args.users,
        "peak": args.peak if args.scenario == "burst" else None,
        "seconds": args.seconds,
        "think_s": args.think,
        "dicom": args.dicom_size,
        "png": args.png_size,
    }
    summary = summarise(stats_csv, statuses, before, after, settings, scenario)
    summary["machine"] = {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "device": args.device,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }
    summary["locust_wall_s"] = round(wall, 1)
    summary["models_dir"] = str(args.models_dir)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("steady", "burst"), default="steady")
    p.add_argument("--users", type=int, default=4, help="steady: concurrent modalities")
    p.add_argument("--spawn-rate", type=float, default=2.0)
    p.add_argument("--peak", type=int, default=12, help="burst: modalities at the peak")
    p.add_argument("--base", type=int, default=2, help="burst: modalities before and after the peak")
    p.add_argument("--seconds", type=float, default=60.0, help="Locust run time (bounded)")
    p.add_argument("--think", default="1,3", help="seconds a modality waits between studies: MIN,MAX or S")
    p.add_argument("--dicom-size", default="2500x3000", help="ROWSxCOLS of the 16-bit DICOM images")
    p.add_argument("--png-size", default="2048x2048", help="ROWSxCOLS of the PNG/JPEG images")
    p.add_argument("--models-dir", type=Path, default=REPO / "models" / "checkpoints")
    p.add_argument("--device", default="cpu")
    p.add_argument("--host", default="127.0.0.1", help="loopback only")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-batch-wait-ms", type=float)
    p.add_argument("--max-queue-size", type=int)
    p.add_argument("--request-timeout-ms", type=float)
    p.add_argument("--decode-workers", type=int)
    p.add_argument("--torch-threads", type=int, help="NORMGATE_TORCH_THREADS (1 suits a shared CPU)")
    p.add_argument("--profile", action="store_true", help="sample the server with py-spy during the run")
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "load" / "latest")
    return p


def main() -> None:
    args = parser().parse_args()
    if args.host not in LOOPBACK:
        raise SystemExit("--host must be a loopback address")
    summary = run(args)
    print(markdown(summary))
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'summary.md'}")


if __name__ == "__main__":
    main()
