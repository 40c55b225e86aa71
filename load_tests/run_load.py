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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# Requests whose correct answer is a 4xx: left out of the valid traffic's throughput and latency.
BAD_PREFIX = "/assess [bad"


# -- server -----------------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def base_url(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def server_env(models_dir: Path, port: int, host: str = "127.0.0.1", **settings) -> dict[str, str]:
    """The process environment for ``python -m service``: NORMGATE_* from keyword settings (None = default)."""
    if host not in LOOPBACK:
        raise SystemExit(f"host {host!r} is not a loopback address")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMGATE_")}
    env.update(
        NORMGATE_HOST=host,
        NORMGATE_PORT=str(port),
        NORMGATE_MODELS_DIR=str(models_dir),
        NORMGATE_DEVICE=settings.pop("device", None) or "cpu",
    )
    for key, value in settings.items():
        if value is not None:
            env[f"NORMGATE_{key.upper()}"] = str(value)
    return env


def start_server(env: dict[str, str], log_path: Path, extra_args: Iterable[str] = ()) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    return subprocess.Popen(
        [*extra_args, sys.executable, "-m", "service"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode} before it was ready; see its log")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {timeout_s} s")


def stop_process(proc: subprocess.Popen | None, grace_s: float = 30) -> None:
    """SIGINT the process group we started, then SIGKILL it if it does not leave in time."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def scrape(url: str) -> str:
    import httpx

    return httpx.get(f"{url}/metrics", timeout=10).text


# -- parsing (pure functions: tests/load_tests feed them canned text) -------------------------------------------
def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {"name{label=value,...}": value} for every sample (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return samples


def _sum_matching(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        have = dict(item.split("=", 1) for item in rest.rstrip("}").split(",") if item)
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def metrics_delta(before: str, after: str) -> dict:
    """What happened between two /metrics scrapes: batch size, queue wait, stage times, rejections."""
    b, a = parse_metrics(before), parse_metrics(after)

    def delta(name: str, **labels: str) -> float:
        return _sum_matching(a, name, **labels) - _sum_matching(b, name, **labels)

    def mean(prefix: str, scale: float = 1.0, **labels: str) -> float | None:
        count = delta(f"{prefix}_count", **labels)
        return round(scale * delta(f"{prefix}_sum", **labels) / count, 3) if count else None

    out: dict = {
        "batches": int(delta("normgate_batch_size_count")),
        "mean_batch_size": mean("normgate_batch_size"),
        "mean_queue_wait_ms": mean("normgate_queue_wait_seconds", 1000),
        "stage_mean_ms": {
            stage: mean("normgate_compute_duration_seconds", 1000, stage=stage)
            for stage in ("decode", "forward_backward", "saliency", "encode")
        },
        "rejected": {},
    }
    reasons = {
        dict(i.split("=", 1) for i in k.partition("{")[2].rstrip("}").split(",") if i).get("reason")
        for k in a
        if k.startswith("normgate_rejected_total{")
    }
    for reason in sorted(r for r in reasons if r):
        count = int(delta("normgate_rejected_total", reason=reason))
        if count:
            out["rejected"][reason] = count
    return out


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


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]) of a list, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


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
            "p50_ms": _round(percentile(ok_ms, 0.50)),
            "p95_ms": _round(percentile(ok_ms, 0.95)),
            "p99_ms": _round(percentile(ok_ms, 0.99)),
            "max_ms": _round(max(ok_ms)) if ok_ms else None,
        },
        "statuses": dict(sorted(by_status.items())),
        "unexpected_statuses": dict(sorted(unexpected.items())),
        "per_request": per_name,
        "server": metrics_delta(metrics_before, metrics_after),
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


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
    port = free_port(args.host)
    url = base_url(args.host, port)
    settings = {
        "max_batch_size": args.max_batch_size,
        "max_batch_wait_ms": args.max_batch_wait_ms,
        "max_queue_size": args.max_queue_size,
        "request_timeout_ms": args.request_timeout_ms,
        "decode_workers": args.decode_workers,
        "torch_threads": args.torch_threads,
    }
    env = server_env(args.models_dir, port, args.host, device=args.device, **settings)
    server = locust = profiler = None
    try:
        server = start_server(env, out / "server.log")
        wait_ready(url, server)
        before = scrape(url)
        if args.profile:
            # Sample the server while Locust runs: collapsed stacks per thread (see load_tests/profile_report.py).
            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "-p",
                    str(server.pid),
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
                stdout=open(out / "py-spy.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
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
        cmd = locust_command(args.scenario, url, args.users, args.spawn_rate, args.seconds, out / "locust")
        started = time.monotonic()
        with open(out / "locust.log", "w") as log:
            locust = subprocess.Popen(
                cmd, cwd=REPO, env=locust_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                locust.wait(args.seconds + 120)  # payload building + stop timeout; then it is cut off
            except subprocess.TimeoutExpired:
                stop_process(locust, grace_s=10)
        wall = time.monotonic() - started
        after = scrape(url)
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
        stop_process(server)
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
