"""SQLite store of evaluation jobs and their per-image rows, and the background runner of the server.

One database file (``NORMGATE_DATA_DIR/evaluate/jobs.sqlite3`` for the server, ``--job-db`` for the CLI) holds

* ``jobs``: id, parameters (JSON), status ``queued|running|done|failed|cancelled``, progress done/total,
  output folder, error sentence, timestamps, a cancel flag;
* ``rows``: one row per (job, image, model, method) — ``UNIQUE`` — written in the same transaction as the
  progress counter, batch by batch. A job killed at any instant therefore has every finished batch stored
  exactly once and nothing of the unfinished one; when it is run again it skips the stored images.

The server never evaluates in its own process: :class:`EvaluationRunner` runs one job at a time in a child
process (``python -m service.evaluate run-job``) started with a raised nice value and one torch thread, so the
``/assess`` traffic keeps the CPU (and the GIL) first. WAL journalling lets the server read progress while the
child writes.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("normgate.jobs")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATUSES = ("done", "failed", "cancelled")

ROW_COLUMNS = (
    "image",
    "model",
    "method",
    "label",
    "probability",
    "point_x",
    "point_y",
    "hit",
    "n_boxes",
    "energy_pg",
    "objects_hit",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    params_key TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    out_dir TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (params_key);
CREATE TABLE IF NOT EXISTS rows (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    image TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    label INTEGER NOT NULL,
    probability REAL NOT NULL,
    point_x INTEGER,
    point_y INTEGER,
    hit INTEGER,
    n_boxes INTEGER NOT NULL,
    energy_pg REAL,
    objects_hit INTEGER NOT NULL DEFAULT 0,
    UNIQUE (job_id, image, model, method)
);
"""


class JobNotFound(KeyError):
    pass


@dataclass(frozen=True)
class Job:
    id: str
    params: dict[str, Any]
    status: str
    done: int
    total: int
    out_dir: str | None
    error: str | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "status": self.status,
            "progress": {"done": self.done, "total": self.total},
            "params": self.params,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def params_key(params: dict[str, Any]) -> str:
    """Canonical JSON of the parameters that decide the results (batch size and output folder do not)."""
    relevant = {k: v for k, v in params.items() if k not in ("batch_size", "out", "device")}
    return json.dumps(relevant, sort_keys=True, separators=(",", ":"))


class JobStore:
    """Thread-safe access to the job database (one connection per call; SQLite does the locking)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            params=json.loads(row["params"]),
            status=row["status"],
            done=row["done"],
            total=row["total"],
            out_dir=row["out_dir"],
            error=row["error"],
            cancel_requested=bool(row["cancel_requested"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    # --- jobs -----------------------------------------------------------------------------------------------
    def create(self, params: dict[str, Any], out_dir: str | Path | None = None, status: str = "queued") -> Job:
        job_id = uuid.uuid4().hex
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, params_key, params, status, out_dir, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    params_key(params),
                    json.dumps(params, sort_keys=True),
                    status,
                    None if out_dir is None else str(out_dir),
                    time.time(),
                ),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return self._job(row)

    def list(self, limit: int = 100) -> list[Job]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [self._job(r) for r in rows]

    def find_resumable(self, params: dict[str, Any]) -> Job | None:
        """The newest unfinished (or failed) job with the same parameters, to resume instead of restarting."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM jobs WHERE params_key = ? AND status IN ('queued', 'running', 'failed') "
                "ORDER BY created_at DESC LIMIT 1",
                (params_key(params),),
            ).fetchone()
        return None if row is None else self._job(row)

    def claim_next(self) -> Job | None:
        """Move the oldest queued job to running (atomically) and return it."""
        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?) WHERE id = ?",
                (time.time(), row["id"]),
            )
        return self.get(row["id"])

    def mark_running(self, job_id: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'running', error = NULL, started_at = COALESCE(started_at, ?) WHERE id = ?",
                (time.time(), job_id),
            )

    def set_out_dir(self, job_id: str, out_dir: str | Path) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE jobs SET out_dir = ? WHERE id = ?", (str(out_dir), job_id))

    def set_total(self, job_id: str, total: int, done: int) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE jobs SET total = ?, done = ? WHERE id = ?", (total, done, job_id))

    def finish(self, job_id: str, status: str, error: str | None = None) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"not a final status: {status!r}")
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                (status, error, time.time(), job_id),
            )

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; flag a running one (it stops between batches)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            if row["status"] == "queued":
                conn.execute(
                    "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = ? WHERE id = ?",
                    (time.time(), job_id),
                )
            elif row["status"] == "running":
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def requeue_orphans(self) -> builtins.list[str]:
        """Jobs left 'running' by a process that died go back to the queue (they resume where they stopped)."""
        with self._transaction() as conn:
            ids = [r["id"] for r in conn.execute("SELECT id FROM jobs WHERE status = 'running'").fetchall()]
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ? "
                "WHERE status = 'running' AND cancel_requested = 1",
                (time.time(),),
            )
            conn.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'")
        return ids

    # --- rows -----------------------------------------------------------------------------------------------
    def add_batch(self, job_id: str, rows: Iterable[Sequence[Any]], images_done: int) -> None:
        """Insert one batch of rows and advance progress in one transaction (all or nothing)."""
        placeholders = ", ".join("?" for _ in range(len(ROW_COLUMNS) + 1))
        with self._transaction() as conn:
            conn.executemany(
                f"INSERT OR IGNORE INTO rows (job_id, {', '.join(ROW_COLUMNS)}) VALUES ({placeholders})",
                [(job_id, *r) for r in rows],
            )
            conn.execute("UPDATE jobs SET done = done + ? WHERE id = ?", (images_done, job_id))

    def completed_images(self, job_id: str, rows_per_image: int) -> set[str]:
        """Images whose every (model, method) row is stored."""
        with self._connect() as conn:
            found = conn.execute(
                "SELECT image FROM rows WHERE job_id = ? GROUP BY image HAVING COUNT(*) >= ?", (job_id, rows_per_image)
            ).fetchall()
        return {r["image"] for r in found}

    def rows(self, job_id: str) -> builtins.list[dict[str, Any]]:
        with self._connect() as conn:
            found = conn.execute(
                f"SELECT {', '.join(ROW_COLUMNS)} FROM rows WHERE job_id = ? ORDER BY model, method, image", (job_id,)
            ).fetchall()
        return [dict(r) for r in found]


class EvaluationRunner:
    """Runs queued jobs one at a time, each in a low-priority child process; start() and stop() from the app.

    ``start()`` puts jobs a previous server left running back in the queue and starts a daemon thread;
    ``stop()`` stops it, terminating the current child (its job stays resumable and is picked up again on the
    next start). Cancellation: the child stops between batches when its cancel flag is set; the runner kills
    it if it has not stopped after ``cancel_grace_s``.
    """

    def __init__(
        self,
        db_path: str | Path,
        jobs_dir: str | Path,
        data_roots: Sequence[str | Path],
        models_dir: str | Path,
        nice: int = 10,
        poll_interval_s: float = 0.5,
        cancel_grace_s: float = 10.0,
        torch_threads: int = 1,
    ):
        self.db_path = Path(db_path)
        self._store: JobStore | None = None
        self._store_lock = threading.Lock()
        self.jobs_dir = Path(jobs_dir)
        self.data_roots = [Path(r) for r in data_roots]
        self.models_dir = Path(models_dir)
        self.nice = nice
        self.poll_interval_s = poll_interval_s
        self.cancel_grace_s = cancel_grace_s
        self.torch_threads = torch_threads
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> EvaluationRunner:
        data_dir = Path(settings.data_dir)
        return cls(
            db_path=data_dir / "evaluate" / "jobs.sqlite3",
            jobs_dir=data_dir / "evaluate" / "jobs",
            data_roots=[data_dir],
            models_dir=Path(settings.models_dir),
        )

    @property
    def store(self) -> JobStore:
        """The job database, created on first use (a server that never evaluates writes nothing)."""
        with self._store_lock:
            if self._store is None:
                self._store = JobStore(self.db_path)
            return self._store

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        if self.db_path.exists():
            requeued = self.store.requeue_orphans()
            if requeued:
                log.info("evaluation jobs requeued after a restart: %s", requeued)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="normgate-evaluation-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None

    def submit(self, params: dict[str, Any]) -> Job:
        job = self.store.create(params)
        self.store.set_out_dir(job.id, self.jobs_dir / job.id)
        self._wake.set()
        return self.store.get(job.id)

    def _child_command(self, job_id: str) -> list[str]:
        return [sys.executable, "-m", "service.evaluate", "run-job", "--job-db", str(self.db_path), "--job-id", job_id]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = str(self.torch_threads)
        env.update(
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            NORMGATE_EVAL_TORCH_THREADS=threads,
            NORMGATE_EVAL_NICE=str(self.nice),
        )
        # The child imports the service package from wherever this process found it.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_next() if self.db_path.exists() else None
            except (sqlite3.Error, OSError):
                log.exception("evaluation runner cannot read the job database")
                job = None
            if job is None:
                self._wake.wait(self.poll_interval_s)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        out_dir = Path(job.out_dir) if job.out_dir else self.jobs_dir / job.id
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            log_path = out_dir / "job.log"
            # A file, not a pipe: the child's progress output must never block on a full pipe.
            with open(log_path, "ab") as log_file:
                self._child = subprocess.Popen(
                    self._child_command(job.id), env=self._child_env(), stdout=log_file, stderr=subprocess.STDOUT
                )
        except OSError as exc:
            self.store.finish(job.id, "failed", f"could not start the evaluation process: {exc}")
            return
        child = self._child
        cancel_seen_at: float | None = None
        while child.poll() is None:
            if self._stop.wait(self.poll_interval_s):
                child.terminate()  # job stays 'running' → requeued on next start, resumes
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                return
            if cancel_seen_at is None and self.store.cancel_requested(job.id):
                cancel_seen_at = time.monotonic()
            if cancel_seen_at is not None and time.monotonic() - cancel_seen_at > self.cancel_grace_s:
                child.kill()
        self._child = None
        current = self.store.get(job.id)
        if current.status == "running":  # the child died without recording an outcome
            if current.cancel_requested:
                self.store.finish(job.id, "cancelled")
            else:
                self.store.finish(
                    job.id,
                    "failed",
                    f"evaluation process ended unexpectedly (exit status {child.returncode}; see {log_path})",
                )
