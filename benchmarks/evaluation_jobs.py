"""Evaluation jobs against a real ``python -m service``: what the refusals of ``POST /evaluate`` cost, and what a
``kill -9`` of the server leaves behind.

1. **Refused before any work.** Each hostile body is posted ``--posts`` times to a running server: the issue's
   ``init: full-random, repeat: 1000000`` (it once allocated 21 GB before the kernel killed the server), a batch
   size of a million, a 10 000-character data path, data-set rows that leave the data folder (``../``, a symbolic
   link out), and a JSON body sent as ``text/plain`` (what a cross-site form can send). Reported: the answer,
   the median and slowest time to it, and the server's peak memory (``VmHWM``) before and after all of them.
2. **Server killed mid-job.** A job of ``--images`` images is submitted; once a few images are stored the server
   gets SIGKILL. Reported: the progress at the kill, how long until no process of the job was left (``/proc``
   polled every millisecond), then, after a restart on the same folders, the number of job processes seen at
   once, the highest progress seen against the total, the rows stored (and how many distinct), and the attempts.

    .venv/bin/python benchmarks/evaluation_jobs.py --out benchmarks/results/evaluation_jobs_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import httpx
import numpy as np
import torch
from PIL import Image

from load_tests import driver
from models.architectures import build_model
from models.checkpoint import save_checkpoint
from models.metadata import ModelMetadata, TrainingRecord

METHODS = ["normgrad-conv1x1-combined", "random"]
GOOD = {"data": "set", "split": "test", "model": "default", "methods": METHODS}


def write_folders(base: Path, images: int) -> tuple[Path, Path]:
    """A data set of ``images`` 64² PNGs (every other one with a box), two splits whose second row leaves the
    data folder, and a random-weight checkpoint."""
    data, models, outside = base / "data", base / "models", base / "outside"
    root = data / "set"
    for folder in (root / "test", outside):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["image_name,annotation"]
    for i in range(images):
        pixels = rng.normal(90, 12, (64, 64)).clip(0, 255).astype(np.uint8)
        pixels[20:28, 30:38] = 235
        Image.fromarray(pixels).save(root / "test" / f"{i:03d}.png")
        lines.append(f"{i:03d}.png,0 30 20 37 27" if i % 2 == 0 else f"{i:03d}.png,")
    (root / "test.csv").write_text("\n".join(lines) + "\n")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "test" / "out.png")
    (root / "dotdot.csv").write_text("image_name,annotation\ntest/000.png,\n../../outside/secret.png,\n")
    (root / "link.csv").write_text("image_name,annotation\ntest/000.png,\ntest/out.png,\n")
    torch.manual_seed(0)
    meta = ModelMetadata(
        name="default",
        version="bench-1",
        arch="resnet18",
        input_size=[64, 64],
        threshold=0.5,
        trained_on=TrainingRecord(notes="nothing (random weights, benchmark only)"),
    )
    save_checkpoint(build_model("resnet18"), meta, models / "default")
    return data, models


def start_server(base: Path, data: Path, models: Path, log_name: str) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m service`` on a free port (load_tests.driver: NORMGATE_* from the shell dropped), once ready."""
    server = driver.start_server(
        models, base / log_name, data_dir=data, state_dir=base / "state", decode_workers=1, torch_threads=1
    )
    server.wait_ready(300)
    return server.process, server.url


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM")


def job_processes(job_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if b"run-job" in argv and job_id.encode() in argv and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def refusals(url: str, server_pid: int, posts: int) -> dict:
    cases = {
        "init full-random, repeat 1000000": ({**GOOD, "init": "full-random", "repeat": 1_000_000}, None),
        "batch_size 1000000": ({**GOOD, "batch_size": 1_000_000}, None),
        "data path of 10 000 characters": ({**GOOD, "data": "d" * 10_000}, None),
        "CSV row ../../outside/secret.png": ({**GOOD, "split": "dotdot"}, None),
        "CSV row a symbolic link out": ({**GOOD, "split": "link"}, None),
        "JSON body as text/plain": (GOOD, "text/plain"),
    }
    peak_before = peak_rss_mib(server_pid)
    out = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, (body, content_type) in cases.items():
            times, answers = [], set()
            for _ in range(posts):
                started = time.perf_counter()
                response = client.post(
                    "/evaluate",
                    content=json.dumps(body).encode(),
                    headers={"content-type": content_type or "application/json"},
                )
                times.append((time.perf_counter() - started) * 1000)
                error = response.json()
                answers.add(f"{response.status_code} {error.get('error')}, request_id {bool(error.get('request_id'))}")
            out[name] = {
                "answers": sorted(answers),
                "detail": error.get("detail", "")[:160],
                "median_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
            }
    return {
        "cases": out,
        "server_peak_rss_mib_before": peak_before,
        "server_peak_rss_mib_after": peak_rss_mib(server_pid),
    }


def kill_mid_job(base: Path, data: Path, models: Path, images: int) -> dict:
    server, url = start_server(base, data, models, "first.log")
    try:
        job_id = httpx.post(f"{url}/evaluate", json={**GOOD, "batch_size": 1}, timeout=30).json()["job_id"]
        while (done := httpx.get(f"{url}/evaluate/{job_id}", timeout=30).json()["progress"]["done"]) < 3:
            time.sleep(0.02)
        children = job_processes(job_id)
        server.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        server.wait()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    while job_processes(job_id) and time.monotonic() - killed < 60:
        time.sleep(0.001)
    gone_ms = (time.monotonic() - killed) * 1000
    left = job_processes(job_id)

    restarted = time.monotonic()
    server, url = start_server(base, data, models, "second.log")
    progress, most_processes = [], 0
    try:
        while True:
            most_processes = max(most_processes, len(job_processes(job_id)))
            status = httpx.get(f"{url}/evaluate/{job_id}", timeout=30).json()
            progress.append((status["progress"]["done"], status["progress"]["total"]))
            if status["status"] not in ("queued", "running"):
                break
            time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(60)
    with sqlite3.connect(data / "evaluate" / "jobs.sqlite3") as conn:
        stored, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT image || '/' || model || '/' || method) FROM rows WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    return {
        "images": images,
        "methods": METHODS,
        "done_at_kill": done,
        "job_processes_at_kill": len(children),
        "job_processes_left_after_kill": len(left),
        "ms_until_no_job_process": round(gone_ms, 1),
        "restart_to_done_s": round(time.monotonic() - restarted, 1),
        "status": status["status"],
        "attempts": status["attempts"],
        "most_job_processes_at_once_after_restart": most_processes,
        "highest_progress_seen": max(d for d, _ in progress),
        "total": status["progress"]["total"],
        "progress_ever_above_total": any(d > t for d, t in progress),
        "rows_stored": stored,
        "rows_distinct": distinct,
        "rows_expected": images * len(METHODS),
        "jobs_in_database": jobs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--posts", type=int, default=20, help="times each refused body is posted")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="normgate-evaluation-jobs-") as tmp:
        base = Path(tmp)
        data, models = write_folders(base, args.images)
        server, url = start_server(base, data, models, "refusals.log")
        try:
            results["refusals"] = refusals(url, server.pid, args.posts)
            results["jobs_stored_by_refusals"] = (
                0
                if not (data / "evaluate" / "jobs.sqlite3").exists()
                else sqlite3.connect(data / "evaluate" / "jobs.sqlite3")
                .execute("SELECT COUNT(*) FROM jobs")
                .fetchone()[0]
            )
        finally:
            server.terminate()
            server.wait(60)
        results["kill_mid_job"] = kill_mid_job(base, data, models, args.images)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
