"""Evaluation jobs die with the server and resume once (issue 17, item 5): the lease on a job row, progress that
never passes the total, the bounded queue, a child bound to its parent's life, and the real thing — ``python -m
service`` killed with SIGKILL in the middle of a job, no evaluation process left behind, the restarted server
finishing the same job with every row once.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.evaluation.jobs import (
    MAX_ATTEMPTS,
    JobStore,
    Lease,
    LeaseHeld,
    LeaseLost,
    QueueFull,
    process_alive,
)
from tests.helpers import REPO, make_checkpoint

pytestmark = pytest.mark.timeout(300)

AREA = "evaluation jobs"
PARAMS = {"data": "/d", "split": "test", "models": ["/m"], "methods": ["gradcam"]}


def row(image: str, method: str = "gradcam") -> tuple:
    return (image, "m", method, 1, 0.9, 3, 4, 1, 1, 0.5, 1)


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_live_lease_is_never_taken_a_dead_or_expired_one_is(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3", lease_s=30.0)
    job = store.create(PARAMS)
    holder = sleeper()
    try:
        first = Lease(token="first", pid=holder.pid, host=socket.gethostname())
        claimed = store.claim_next(first)
        assert claimed is not None and claimed.id == job.id and claimed.attempts == 1
        # Another runner of this host, another server on another host: neither takes a job a live process holds.
        assert store.claim_next(Lease.new()) is None
        with pytest.raises(LeaseHeld, match=str(holder.pid)):
            store.acquire(job.id, Lease.new())
        # The holder adopts its own lease (the runner's child does this with the runner's token).
        assert store.acquire(job.id, first).lease_owner == "first"
    finally:
        holder.kill()
        holder.wait()
    assert not process_alive(holder.pid)
    second = Lease.new()
    resumed = store.claim_next(second)  # same host, holder gone: taken over without waiting for the expiry
    assert resumed is not None and resumed.id == job.id and resumed.lease_owner == second.token
    assert resumed.attempts == 2

    # A server shutting down gives the job back (not counted as an interruption) …
    store.release(job.id, second.token)
    assert store.get(job.id).status == "queued" and store.get(job.id).attempts == 1
    # … and a holder on another host is trusted until its lease expires.
    remote = JobStore(tmp_path / "jobs.sqlite3", lease_s=0.2)
    remote.acquire(job.id, Lease(token="remote", pid=1, host="another-host"))
    assert store.claim_next(Lease.new()) is None
    time.sleep(0.3)
    assert store.claim_next(Lease.new()).attempts == 3


def test_a_run_that_lost_its_lease_writes_nothing_and_progress_stops_at_the_total(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.create(PARAMS)
    old, new = Lease.new(), Lease.new()
    store.acquire(job.id, old)
    store.set_total(job.id, total=3, done=0, token=old.token)
    assert store.add_batch(job.id, [row("a"), row("b")], token=old.token) == 2
    # The same images again (a duplicate run, a retried batch): no new rows, no progress.
    assert store.add_batch(job.id, [row("a"), row("b")], token=old.token) == 0
    assert store.get(job.id).done == 2

    with sqlite3.connect(store.path) as conn:  # the holder stalls past its lease; another runner takes over
        conn.execute("UPDATE jobs SET lease_until = 0 WHERE id = ?", (job.id,))
    store.acquire(job.id, new)
    with pytest.raises(LeaseLost):
        store.add_batch(job.id, [row("c")], token=old.token)
    with pytest.raises(LeaseLost):
        store.finish(job.id, "done", token=old.token)
    assert not store.renew(job.id, old.token) and store.renew(job.id, new.token)
    assert len(store.rows(job.id)) == 2 and store.get(job.id).status == "running"

    # Even an unguarded writer cannot push progress past the total.
    store.add_batch(job.id, [row("c"), row("d"), row("e")])
    assert store.get(job.id).done == 3 == store.get(job.id).total


def test_the_queue_is_bounded_and_endless_interruptions_end_failed(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for _ in range(2):
        store.create(PARAMS, max_queued=2)
    with pytest.raises(QueueFull):
        store.create(PARAMS, max_queued=2)
    assert len(store.list()) == 2

    job = store.claim_next(Lease.new())
    for _ in range(MAX_ATTEMPTS - 1):  # interrupted: its holder dies (a pid that cannot exist)
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE jobs SET lease_pid = -1 WHERE id = ?", (job.id,))
        assert store.claim_next(Lease.new()).id == job.id
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE jobs SET lease_pid = -1 WHERE id = ?", (job.id,))
    other = store.claim_next(Lease.new())
    assert other is not None and other.id != job.id
    failed = store.get(job.id)
    assert failed.status == "failed" and f"interrupted {MAX_ATTEMPTS} times" in failed.error


def test_an_old_job_database_gains_the_lease_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # the schema before leases
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, params_key TEXT NOT NULL, params TEXT NOT NULL, status TEXT "
            "NOT NULL, done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0, out_dir TEXT, error TEXT, "
            "cancel_requested INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, finished_at REAL)"
        )
        conn.execute("INSERT INTO jobs VALUES ('old', '{}', '{}', 'running', 5, 40, NULL, NULL, 0, 1.0, 1.0, NULL)")
    store = JobStore(path)
    resumed = store.claim_next(Lease.new())  # left running by an old server: no lease, so it resumes
    assert resumed.id == "old" and resumed.attempts == 1 and resumed.done == 5


def test_the_child_dies_with_its_parent(tmp_path):
    """bind_to_parent in a grandchild; its parent killed with SIGKILL: the grandchild goes too."""
    pid_file = tmp_path / "grandchild.pid"
    grandchild = (
        "import os, time; from service.evaluation.jobs import bind_to_parent; "
        f"bind_to_parent(os.getppid()); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)",
        ],
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert process_alive(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid)


# --- the real server, killed ---------------------------------------------------------------------------------

N_IMAGES = 8
METHODS = ["normgrad-conv1x1-combined", "random"]
# Generous: on a loaded 2-core machine a server takes ~20 s to start and its low-priority job process (nice +10,
# torch imported at ~1 % of a core) as long again; an idle machine does both in a few seconds.
STARTUP_S = 240.0


def _write_data_set(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "test").mkdir(parents=True)
    lines = ["image_name,annotation"]
    for i in range(N_IMAGES):
        pixels = rng.normal(90, 12, (64, 64)).clip(0, 255).astype(np.uint8)
        pixels[20:28, 30:38] = 235
        Image.fromarray(pixels).save(root / "test" / f"{i:03d}.png")
        lines.append(f"{i:03d}.png,0 30 20 37 27" if i % 2 == 0 else f"{i:03d}.png,")
    (root / "test.csv").write_text("\n".join(lines) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(base: Path, data: Path, models: Path, log_name: str) -> tuple[subprocess.Popen, str]:
    """``python -m service`` on a free port, once it answers /healthz: its job runner is started by then (the
    lifespan runs before the first answer), and the job does not need the /assess models to be warm."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMGATE_")}
    env.update(
        NORMGATE_PORT=str(port),
        NORMGATE_DATA_DIR=str(data),
        NORMGATE_MODELS_DIR=str(models),
        NORMGATE_STATE_DIR=str(base / "state"),
        NORMGATE_DEVICE="cpu",
        NORMGATE_DECODE_WORKERS="1",
        NORMGATE_TORCH_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    with open(base / log_name, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while True:
        assert proc.poll() is None, (base / log_name).read_text()[-2000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, (base / log_name).read_text()[-2000:]
        time.sleep(0.1)


def _job_processes(job_id: str) -> list[int]:
    """Live processes running this job (``… run-job … --job-id ID``), from /proc; a zombie is not live."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run-job" in argv and job_id.encode() in argv and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(interval_s)
    return value


@pytest.mark.timeout(900)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
def test_sigkill_of_the_server_leaves_no_job_process_and_the_restart_finishes_the_job_once(tmp_path, fault_row):
    data, models = tmp_path / "data", tmp_path / "models"
    _write_data_set(data / "set")
    make_checkpoint(models / "default", serves=None)
    body = {"data": "set", "split": "test", "model": "default", "methods": METHODS, "batch_size": 1}
    progress: list[tuple[int, int]] = []

    def status_of(url: str) -> dict:
        answer = httpx.get(f"{url}/evaluate/{job_id}", timeout=30).json()
        progress.append((answer["progress"]["done"], answer["progress"]["total"]))
        return answer

    server, url = _start_server(tmp_path, data, models, "first.log")
    try:
        accepted = httpx.post(f"{url}/evaluate", json=body, timeout=30)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        _wait_until(lambda: status_of(url)["progress"]["done"] >= 1, STARTUP_S, "the job's first image", 0.02)
        (child,) = _job_processes(job_id)
        assert _parent_of(child) == server.pid  # the server's own child: the only process this test stops
        # Read before the freeze: a child stopped inside a store transaction can hold the job's database lock, and
        # the server's status read would wait on it (a CI run timed out here).
        done_at_kill = status_of(url)["progress"]["done"]
        # Frozen, so the kill lands mid-job however fast this machine is (a stopped process dies of SIGKILL too).
        os.kill(child, signal.SIGSTOP)
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        killed_at = time.monotonic()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert 0 < done_at_kill < N_IMAGES
    # The kernel ends the child the moment its parent dies (PR_SET_PDEATHSIG); polled, with room for a slow reap.
    deadline = killed_at + 30
    while (_job_processes(job_id) or process_alive(child)) and time.monotonic() < deadline:
        time.sleep(0.02)
    orphans = _job_processes(job_id)
    assert not orphans and not process_alive(child), orphans

    server, url = _start_server(tmp_path, data, models, "second.log")
    try:

        def finished() -> dict | None:
            assert len(_job_processes(job_id)) <= 1  # never a second copy of the job
            answer = status_of(url)
            return None if answer["status"] in ("queued", "running") else answer

        status = _wait_until(finished, STARTUP_S + 120, "the resumed job's end", 0.1)
        _wait_until(lambda: not _job_processes(job_id), 60, "the job process's exit once done")
    finally:
        server.terminate()
        server.wait(60)
    assert status["status"] == "done", status
    assert status["progress"] == {"done": N_IMAGES, "total": N_IMAGES} and status["attempts"] == 2
    assert all(done <= total or total == 0 for done, total in progress), progress
    assert max(done for done, _ in progress) == N_IMAGES
    with sqlite3.connect(data / "evaluate" / "jobs.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1
        stored, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT image || '/' || model || '/' || method) FROM rows WHERE job_id = ?",
            (job_id,),
        ).fetchone()
    assert stored == distinct == N_IMAGES * len(METHODS)
    assert status["results"]["counts"]["rows"] == N_IMAGES * len(METHODS)
    # Exactly one evaluation process ran after the restart: the second server's log names one job start.
    resumed = [line for line in (tmp_path / "second.log").read_text().splitlines() if "resumes" in line]
    assert len(resumed) == 1 and f"{done_at_kill}/{N_IMAGES} images stored" in resumed[0], resumed

    fault_row(
        AREA,
        f"`kill -9` of `python -m service` with a job mid-run (≥ 1 of {N_IMAGES} images stored)",
        "no evaluation process left running",
        "no evaluation process left running" if not orphans else f"{len(orphans)} left running",
    )
    times = "once" if len(resumed) == 1 else f"{len(resumed)} times"
    above = any(done > total > 0 for done, total in progress)
    expected = f"resumed once and done: {N_IMAGES}/{N_IMAGES}, {N_IMAGES * len(METHODS)} rows, progress ≤ total"
    observed = (
        f"resumed {times} and {status['status']}: {status['progress']['done']}/{status['progress']['total']}, "
        f"{stored} rows, progress {'>' if above else '≤'} total"
    )
    fault_row(AREA, "server restarted after that `kill -9`", expected, observed)
    assert observed == expected
