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

Exactly one process runs a job, and a job outlives no server
(docs/evaluation.md, "Jobs die with the server and resume once"):

* **A lease** on the job row (``lease_owner`` token, the holder's pid and host, ``lease_until``): the runner
  takes it when it claims the job, the child adopts it and renews it (:class:`LeaseKeeper`), and every write of
  a run — a batch, the total, the outcome — is refused unless the writer still holds it (:class:`LeaseLost`).
  Another runner takes a job over only when its lease is free, expired, or held by a process on this host that
  no longer exists; so a restarted server resumes an interrupted job, once, and never runs a second copy.
* **Bound to the server's life**: the child asks the kernel for SIGKILL when its parent dies (Linux
  ``prctl(PR_SET_PDEATHSIG)``; elsewhere, and as a backstop, it polls its parent's pid), so ``kill -9`` of the
  server leaves no evaluation running. The signal follows the *thread* that started the child, which is why the
  runner's thread waits on the child for as long as it lives.
* **Progress counts images, once**: a batch advances ``done`` only by the images whose rows it newly stored,
  and never past ``total``.
* **The queue is bounded** (:class:`QueueFull` beyond ``max_queued`` waiting jobs); a job interrupted
  :data:`MAX_ATTEMPTS` times is failed, not started again.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import logging
import os
import signal
import socket
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

from service.evaluation.limits import DEFAULT_MAX_QUEUED_JOBS

log = logging.getLogger("normgate.jobs")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATUSES = ("done", "failed", "cancelled")

# How long a lease lasts without renewal; holders renew it every third of that. Taking over a dead holder's job
# on the same host does not wait for it (its pid is gone); only a holder on another host, or a stopped one, does.
LEASE_S = 30.0
# A job whose run was interrupted this many times (server killed, child killed by the OOM killer …) is failed.
MAX_ATTEMPTS = 3
# The environment through which the runner hands its child the lease token and its own pid.
LEASE_ENV = "NORMGATE_EVAL_LEASE"
PARENT_PID_ENV = "NORMGATE_EVAL_PARENT_PID"

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
    finished_at REAL,
    lease_owner TEXT,
    lease_pid INTEGER,
    lease_host TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0
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


# Columns added after the first release: a job database written by an older server gains them at open.
_ADDED_COLUMNS = {
    "lease_owner": "TEXT",
    "lease_pid": "INTEGER",
    "lease_host": "TEXT",
    "lease_until": "REAL",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
}


class JobNotFound(KeyError):
    pass


class QueueFull(RuntimeError):
    """``max_queued`` jobs are already waiting."""


class LeaseLost(RuntimeError):
    """This process no longer holds the job's lease: another runner took it over; stop without writing."""


class LeaseHeld(RuntimeError):
    """Another live process holds the job's lease (it is running the job now)."""


@dataclass(frozen=True)
class Lease:
    """Who holds a job: a token per run, and the process and host that renew it."""

    token: str
    pid: int
    host: str

    @classmethod
    def new(cls, token: str | None = None) -> Lease:
        return cls(token=token or uuid.uuid4().hex, pid=os.getpid(), host=socket.gethostname())


def process_alive(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (a zombie has: it only waits to be reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill(0) is all there is
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def lease_takeable(row: sqlite3.Row, now: float, host: str) -> bool:
    """A lease nobody holds, one that expired, or one whose holder on this host has exited."""
    if row["lease_owner"] is None or row["lease_until"] is None or row["lease_until"] < now:
        return True
    return bool(row["lease_host"] == host and not process_alive(int(row["lease_pid"] or 0)))


def bind_to_parent(parent_pid: int) -> None:
    """Die with the parent: the kernel sends SIGKILL when it exits (Linux). Called first thing in the child.

    The parent may already be gone when this runs (nobody would then send the signal): checked after the call.
    """
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1  # <linux/prctl.h>
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); relying on polling the parent", ctypes.get_errno())
    if os.getppid() != parent_pid:
        os._exit(1)


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
    lease_owner: str | None = None
    lease_pid: int | None = None
    lease_until: float | None = None
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "status": self.status,
            "progress": {"done": self.done, "total": self.total},
            "params": self.params,
            "error": self.error,
            "attempts": self.attempts,
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

    def __init__(self, path: str | Path, lease_s: float = LEASE_S):
        self.path = Path(path)
        self.lease_s = lease_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            present = {r["name"] for r in conn.execute("PRAGMA table_info(jobs)").fetchall()}
            for column, declaration in _ADDED_COLUMNS.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")

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
            lease_owner=row["lease_owner"],
            lease_pid=row["lease_pid"],
            lease_until=row["lease_until"],
            attempts=row["attempts"],
        )

    # --- jobs -----------------------------------------------------------------------------------------------
    def create(
        self,
        params: dict[str, Any],
        out_dir: str | Path | None = None,
        status: str = "queued",
        *,
        job_id: str | None = None,
        max_queued: int | None = None,
    ) -> Job:
        """A new job; :class:`QueueFull` (nothing stored) when ``max_queued`` jobs are already waiting."""
        job_id = job_id or uuid.uuid4().hex
        with self._transaction() as conn:
            if max_queued is not None:
                (waiting,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
                if waiting >= max_queued:
                    raise QueueFull(f"{waiting} evaluation jobs are waiting; the limit is {max_queued}")
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

    def claim_next(self, lease: Lease) -> Job | None:
        """Take the next job to run under ``lease``: first an interrupted one whose lease can be taken over (it
        resumes), else the oldest queued one. Interrupted jobs that were being cancelled end cancelled; those
        interrupted :data:`MAX_ATTEMPTS` times end failed."""
        now = time.time()
        with self._connect() as conn:  # polled every half second: look before taking the write lock
            if not any(
                row["status"] == "queued" or lease_takeable(row, now, lease.host)
                for row in conn.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running')").fetchall()
            ):
                return None
        with self._transaction() as conn:
            chosen: str | None = None
            for row in conn.execute("SELECT * FROM jobs WHERE status = 'running' ORDER BY created_at").fetchall():
                if not lease_takeable(row, now, lease.host):
                    continue
                if row["cancel_requested"]:
                    self._end(conn, row["id"], "cancelled", None, now)
                elif row["attempts"] >= MAX_ATTEMPTS:
                    message = f"interrupted {row['attempts']} times (server restarts or a killed process); not retried"
                    self._end(conn, row["id"], "failed", message, now)
                elif chosen is None:
                    chosen = row["id"]
            if chosen is None:
                row = conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT 1").fetchone()
                if row is None:
                    return None
                chosen = row["id"]
            self._take(conn, chosen, lease, now)
        return self.get(chosen)

    def _take(self, conn: sqlite3.Connection, job_id: str, lease: Lease, now: float) -> None:
        conn.execute(
            "UPDATE jobs SET status = 'running', error = NULL, started_at = COALESCE(started_at, ?), "
            "lease_owner = ?, lease_pid = ?, lease_host = ?, lease_until = ?, attempts = attempts + 1 WHERE id = ?",
            (now, lease.token, lease.pid, lease.host, now + self.lease_s, job_id),
        )

    @staticmethod
    def _end(conn: sqlite3.Connection, job_id: str, status: str, error: str | None, now: float) -> None:
        conn.execute(
            "UPDATE jobs SET status = ?, error = ?, finished_at = ?, lease_owner = NULL, lease_until = NULL "
            "WHERE id = ?",
            (status, error, now, job_id),
        )

    def acquire(self, job_id: str, lease: Lease) -> Job:
        """Hold the job to run it now (the command line, or the runner's child adopting its runner's lease).

        The same token adopts the lease (its pid becomes this process's); a free, expired or dead holder's lease
        is taken over; a live holder's is not (:class:`LeaseHeld`)."""
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            if row["lease_owner"] == lease.token:
                conn.execute(
                    "UPDATE jobs SET lease_pid = ?, lease_host = ?, lease_until = ? WHERE id = ?",
                    (lease.pid, lease.host, now + self.lease_s, job_id),
                )
            elif row["status"] in ("queued", "running", "failed") and lease_takeable(row, now, lease.host):
                self._take(conn, job_id, lease, now)
            elif row["status"] not in FINAL_STATUSES:
                raise LeaseHeld(
                    f"job {job_id} is being run by process {row['lease_pid']} on {row['lease_host']} "
                    f"(lease renewed until {time.strftime('%H:%M:%S', time.localtime(row['lease_until']))})"
                )
        return self.get(job_id)

    def renew(self, job_id: str, token: str) -> bool:
        """Extend the lease; False when ``token`` no longer holds it."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (time.time() + self.lease_s, job_id, token),
            )
        return cursor.rowcount == 1

    def release(self, job_id: str, token: str) -> None:
        """Give the job back to the queue (a server shutting down): the next runner resumes it at once."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, "
                "attempts = MAX(attempts - 1, 0) WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (job_id, token),
            )

    @staticmethod
    def _check_holder(conn: sqlite3.Connection, job_id: str, token: str | None) -> None:
        if token is None:
            return
        row = conn.execute("SELECT lease_owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row["lease_owner"] != token:
            raise LeaseLost(f"job {job_id}: this process no longer holds its lease")

    def set_out_dir(self, job_id: str, out_dir: str | Path) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE jobs SET out_dir = ? WHERE id = ?", (str(out_dir), job_id))

    def set_total(self, job_id: str, total: int, done: int, token: str | None = None) -> None:
        with self._transaction() as conn:
            self._check_holder(conn, job_id, token)
            conn.execute("UPDATE jobs SET total = ?, done = MIN(?, ?) WHERE id = ?", (total, done, total, job_id))

    def finish(self, job_id: str, status: str, error: str | None = None, token: str | None = None) -> None:
        """Record the outcome (and free the lease); with ``token``, only while it holds the lease."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"not a final status: {status!r}")
        with self._transaction() as conn:
            self._check_holder(conn, job_id, token)
            self._end(conn, job_id, status, error, time.time())

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

    # --- rows -----------------------------------------------------------------------------------------------
    def add_batch(self, job_id: str, rows: Iterable[Sequence[Any]], token: str | None = None) -> int:
        """Insert one batch of rows and advance progress in one transaction (all or nothing); returns the
        images it added. Progress counts only images whose rows were not stored yet and stops at the total; with
        ``token``, nothing is written unless it still holds the lease (:class:`LeaseLost`)."""
        placeholders = ", ".join("?" for _ in range(len(ROW_COLUMNS) + 1))
        insert = f"INSERT OR IGNORE INTO rows (job_id, {', '.join(ROW_COLUMNS)}) VALUES ({placeholders})"
        with self._transaction() as conn:
            self._check_holder(conn, job_id, token)
            new_images: set[Any] = set()
            for row in rows:
                if conn.execute(insert, (job_id, *row)).rowcount == 1:
                    new_images.add(row[0])  # ROW_COLUMNS[0]: the image
            conn.execute("UPDATE jobs SET done = MIN(done + ?, MAX(total, 0)) WHERE id = ?", (len(new_images), job_id))
        return len(new_images)

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


class LeaseKeeper:
    """Renews a job's lease every third of its length in a daemon thread, for as long as the job runs.

    ``lost`` is set when the lease was taken over (the run must stop; its writes are refused anyway). With
    ``parent_pid``, the process exits at once when its parent is gone (where PR_SET_PDEATHSIG is not there)."""

    def __init__(self, store: JobStore, job_id: str, token: str, parent_pid: int | None = None) -> None:
        self.store, self.job_id, self.token, self.parent_pid = store, job_id, token, parent_pid
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="normgate-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _loop(self) -> None:
        interval = self.store.lease_s / 3.0
        next_renewal = time.monotonic() + interval
        while not self._stop.wait(min(1.0, interval)):
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                os._exit(1)  # the server is gone: so is its job process (its lease lapses; the next server resumes)
            if time.monotonic() < next_renewal:
                continue
            next_renewal = time.monotonic() + interval
            try:
                if not self.store.renew(self.job_id, self.token):
                    self.lost.set()
                    return
            except sqlite3.Error:
                log.exception("cannot renew the lease of job %s", self.job_id)


class EvaluationRunner:
    """Runs queued jobs one at a time, each in a low-priority child process; start() and stop() from the app.

    ``start()`` starts a daemon thread that claims jobs (queued ones, and interrupted ones whose lease it may take
    over: they resume); ``stop()`` stops it, terminating the current child and giving its job back to the queue
    (the next start resumes it). Cancellation: the child stops between batches when its cancel flag is set; the
    runner kills it if it has not stopped after ``cancel_grace_s``.
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
        max_queued: int = DEFAULT_MAX_QUEUED_JOBS,
        lease_s: float = LEASE_S,
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
        self.max_queued = max_queued
        self.lease_s = lease_s
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
            max_queued=settings.evaluate_max_queued,
        )

    @property
    def store(self) -> JobStore:
        """The job database, created on first use (a server that never evaluates writes nothing)."""
        with self._store_lock:
            if self._store is None:
                self._store = JobStore(self.db_path, lease_s=self.lease_s)
            return self._store

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
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
        """Store a queued job (:class:`QueueFull` when ``max_queued`` are waiting) and wake the runner."""
        job_id = uuid.uuid4().hex
        job = self.store.create(params, out_dir=self.jobs_dir / job_id, job_id=job_id, max_queued=self.max_queued)
        self._wake.set()
        return job

    def _child_command(self, job_id: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "service.evaluate",
            "run-job",
            "--job-db",
            str(self.db_path),
            "--job-id",
            job_id,
            "--lease-s",
            repr(self.lease_s),
        ]

    def _child_env(self, lease: Lease) -> dict[str, str]:
        env = dict(os.environ)
        threads = str(self.torch_threads)
        env.update(
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            NORMGATE_EVAL_TORCH_THREADS=threads,
            NORMGATE_EVAL_NICE=str(self.nice),
        )
        env[LEASE_ENV] = lease.token
        env[PARENT_PID_ENV] = str(os.getpid())
        # The child imports the service package from wherever this process found it.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _loop(self) -> None:
        while not self._stop.is_set():
            lease = Lease.new()
            try:
                job = self.store.claim_next(lease) if self.db_path.exists() else None
            except (sqlite3.Error, OSError):
                log.exception("evaluation runner cannot read the job database")
                job = None
            if job is None:
                self._wake.wait(self.poll_interval_s)
                self._wake.clear()
                continue
            if job.attempts > 1:
                log.info("evaluation job %s resumes (%d/%d images stored)", job.id, job.done, job.total)
            try:
                self._run(job, lease)
            except (sqlite3.Error, OSError):
                log.exception("evaluation runner lost the job database while running job %s", job.id)

    def _run(self, job: Job, lease: Lease) -> None:
        out_dir = Path(job.out_dir) if job.out_dir else self.jobs_dir / job.id
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            # A file, not a pipe: the child's progress output must never block on a full pipe.
            with open(out_dir / "job.log", "ab") as log_file:
                # Started from this thread, which waits below for as long as the child lives: the child's
                # PR_SET_PDEATHSIG fires when the thread that started it ends, not only the process.
                self._child = subprocess.Popen(
                    self._child_command(job.id), env=self._child_env(lease), stdout=log_file, stderr=subprocess.STDOUT
                )
        except OSError as exc:
            self.store.finish(job.id, "failed", f"could not start the evaluation process: {exc}", token=lease.token)
            return
        child = self._child
        cancel_seen_at: float | None = None
        next_renewal = time.monotonic() + self.lease_s / 3.0
        while child.poll() is None:
            if self._stop.wait(self.poll_interval_s):
                child.terminate()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                self.store.release(job.id, lease.token)  # back to the queue: the next start resumes it
                return
            if time.monotonic() >= next_renewal:  # the child renews too; this covers its start-up
                self.store.renew(job.id, lease.token)
                next_renewal = time.monotonic() + self.lease_s / 3.0
            if cancel_seen_at is None and self.store.cancel_requested(job.id):
                cancel_seen_at = time.monotonic()
            if cancel_seen_at is not None and time.monotonic() - cancel_seen_at > self.cancel_grace_s:
                child.kill()
        self._child = None
        current = self.store.get(job.id)
        if current.status == "running" and current.lease_owner == lease.token:  # died without an outcome
            try:
                if current.cancel_requested:
                    self.store.finish(job.id, "cancelled", token=lease.token)
                else:
                    self.store.finish(
                        job.id,
                        "failed",
                        f"evaluation process ended unexpectedly (exit status {child.returncode}; see its job.log)",
                        token=lease.token,
                    )
            except LeaseLost:
                pass  # taken over in the meantime: the new holder reports the outcome
