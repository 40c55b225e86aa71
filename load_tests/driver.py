"""Start a NormGate server on loopback and drive HTTP load against it: the one driver behind ``load_tests/`` and
``benchmarks/``.

* **Server lifecycle.** ``python -m service`` (or any command that answers ``GET /readyz``) runs as a child in
  its own process group on a free loopback port, with ``NORMGATE_*`` settings from keyword arguments and its
  output in a log file; readiness is ``/readyz`` answering 200 (a clear error, with the log's last lines, if the
  process exits first); stopping sends SIGINT to the group, then SIGKILL if it does not leave in time.
  ``with served(models_dir, max_batch_size=8) as server: server.url``.
* **/metrics.** Scrape, parse (Prometheus text → one float per sample) and the difference between two scrapes:
  the server's mean batch size, queue wait, time per stage and rejections during a run.
* **Load.** A closed loop (N clients, each sending its next request as soon as its last answer came, for a
  number of requests or a time budget) and an open loop (Poisson arrivals at a fixed rate for a duration,
  sent whether or not earlier requests were answered, like modalities that do not wait for each other).
  Both are async (httpx), both return one ``RequestRecord`` per request, and ``summarise`` turns either run
  into counts by status, throughput of 200 answers and exact percentiles of their latency (nearest rank over
  every answer, not histogram buckets).

Only loopback addresses are accepted: this drives a server it started on this machine.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
SERVICE_COMMAND = (sys.executable, "-m", "service")
LOG_TAIL_LINES = 20


# -- server lifecycle ---------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it; a race with another process is possible but rare)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def base_url(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def server_env(models_dir: Path, port: int, host: str = "127.0.0.1", **settings: Any) -> dict[str, str]:
    """The environment for ``python -m service``: this process's, less any ``NORMGATE_*`` (so a developer's
    shell cannot change a benchmark), plus host, port, models dir, device (default cpu) and ``NORMGATE_<KEY>``
    for every keyword setting that is not None."""
    if host not in LOOPBACK:
        raise ValueError(f"host {host!r} is not a loopback address ({', '.join(sorted(LOOPBACK))})")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMGATE_")}
    env.update(
        NORMGATE_HOST=host,
        NORMGATE_PORT=str(port),
        NORMGATE_MODELS_DIR=str(models_dir),
        NORMGATE_DEVICE=str(settings.pop("device", None) or "cpu"),
    )
    for key, value in settings.items():
        if value is not None:
            env[f"NORMGATE_{key.upper()}"] = str(value)
    return env


def start_process(
    command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    """``command`` in a new session (so ``stop_process`` reaches its children), stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")  # the log is current when read
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(command), cwd=cwd, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(process: subprocess.Popen[bytes] | None, grace_s: float = 30.0) -> None:
    """SIGINT the process group we started, then SIGKILL it if it does not leave within ``grace_s``."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout_s: float = 300.0,
    log_path: Path | None = None,
    poll_s: float = 0.25,
) -> None:
    """Poll ``url``/readyz until it answers 200. Raises RuntimeError if ``process`` exits first (with the tail
    of ``log_path``) or after ``timeout_s`` (with the last answer or error)."""
    see = f"; see {log_path}" if log_path else ""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            tail = log_tail(log_path) if log_path else ""
            raise RuntimeError(
                f"server exited with code {process.returncode} before {url}/readyz answered 200{see}"
                + (f"\n--- last lines of the log ---\n{tail}" if tail else "")
            )
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                return
            last = f"status {response.status_code}: {response.text[:200]}"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{url}/readyz not 200 after {timeout_s:g} s (last: {last}){see}")
        time.sleep(poll_s)


@dataclass
class ServerProcess:
    """A server we started: its process, base URL and log. A context manager that stops it on exit."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        wait_ready(self.url, self.process, timeout_s, self.log_path)

    def scrape(self) -> str:
        return scrape(self.url)

    def stop(self, grace_s: float = 30.0) -> None:
        stop_process(self.process, grace_s)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def launch(
    command: Sequence[str], url: str, log_path: Path | None = None, env: Mapping[str, str] | None = None
) -> ServerProcess:
    """Start any server ``command`` that will answer at ``url`` (not waited for: call ``wait_ready``)."""
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="normgate-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    return ServerProcess(start_process(command, log_path, env), url, log_path)


def start_server(
    models_dir: Path,
    log_path: Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    command: Sequence[str] = SERVICE_COMMAND,
    **settings: Any,
) -> ServerProcess:
    """Start ``python -m service`` (or ``command``, which reads the same ``NORMGATE_*`` environment) on a free
    loopback port with ``NORMGATE_<KEY>=value`` for each keyword setting; not waited for."""
    port = free_port(host) if port is None else port
    env = server_env(models_dir, port, host, **settings)
    return launch(command, base_url(host, port), log_path, env)


@contextmanager
def served(
    models_dir: Path, log_path: Path | None = None, *, ready_timeout_s: float = 300.0, **kwargs: Any
) -> Iterator[ServerProcess]:
    """``with served(models_dir, max_batch_size=8) as server:`` — started, ready, and stopped on exit."""
    with start_server(models_dir, log_path, **kwargs) as server:
        server.wait_ready(ready_timeout_s)
        yield server


# -- /metrics -----------------------------------------------------------------------------------------------------
def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {"name{label=value,...}": value} for every sample (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return samples


def _split(key: str) -> tuple[str, dict[str, str]]:
    name, _, rest = key.partition("{")
    return name, dict(item.split("=", 1) for item in rest.rstrip("}").split(",") if item)


def _sum_matching(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        metric, have = _split(key)
        if metric == name and all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def metrics_delta(before: str, after: str) -> dict[str, Any]:
    """What happened between two /metrics scrapes: batches, mean batch size, mean queue wait (ms), mean time
    per compute stage (ms), rejections by reason."""
    b, a = parse_metrics(before), parse_metrics(after)

    def delta(name: str, **labels: str) -> float:
        return _sum_matching(a, name, **labels) - _sum_matching(b, name, **labels)

    def mean(prefix: str, scale: float = 1.0, **labels: str) -> float | None:
        count = delta(f"{prefix}_count", **labels)
        return round(scale * delta(f"{prefix}_sum", **labels) / count, 3) if count else None

    reasons = sorted({_split(k)[1].get("reason", "") for k in a if k.startswith("normgate_rejected_total{")} - {""})
    rejected = {r: int(delta("normgate_rejected_total", reason=r)) for r in reasons}
    return {
        "batches": int(delta("normgate_batch_size_count")),
        "mean_batch_size": mean("normgate_batch_size"),
        "mean_queue_wait_ms": mean("normgate_queue_wait_seconds", 1000),
        "stage_mean_ms": {
            stage: mean("normgate_compute_duration_seconds", 1000, stage=stage)
            for stage in ("decode", "forward_backward", "saliency", "encode")
        },
        "rejected": {r: n for r, n in rejected.items() if n},
    }


def histogram_means(
    before: str, after: str, exclude: Sequence[str] = ("normgate_request_duration_seconds",)
) -> dict[str, float]:
    """Mean per observation between two scrapes of every histogram that was observed in between, summed over
    its labels except ``stage``: {"batch_size": 2.5, "compute_duration_seconds[decode]": 0.19, ...} (the
    ``normgate_`` prefix dropped, units as exported)."""

    def totals(text: str) -> dict[str, list[float]]:
        samples = parse_metrics(text)
        histograms = {_split(k)[0].removesuffix("_bucket") for k in samples if _split(k)[0].endswith("_bucket")}
        out: dict[str, list[float]] = {}
        for key, value in samples.items():
            name, labels = _split(key)
            for slot, suffix in enumerate(("_sum", "_count")):
                base = name.removesuffix(suffix)
                if name.endswith(suffix) and base in histograms and base not in exclude:
                    label = base.removeprefix("normgate_") + (f"[{labels['stage']}]" if "stage" in labels else "")
                    out.setdefault(label, [0.0, 0.0])[slot] += value
        return out

    start, end = totals(before), totals(after)
    means = {}
    for key, (total, count) in end.items():
        total0, count0 = start.get(key, [0.0, 0.0])
        if count > count0:
            means[key] = (total - total0) / (count - count0)
    return means


# -- load -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestRecord:
    """One request of a run. ``status`` is None when no answer came; ``error`` then names why (the httpx
    exception's class, or ``abandoned``: the open loop stopped waiting for it)."""

    start_s: float  # when it was sent, seconds after the run started
    latency_s: float  # until the whole answer arrived (or the error, or abandonment)
    status: int | None
    response_bytes: int
    error: str | None = None

    @property
    def outcome(self) -> str:
        return str(self.status) if self.status is not None else str(self.error)


@dataclass(frozen=True)
class LoadRun:
    """Every request of a run (in the order they were sent) and the run's wall time (first send until the
    last answer, or until the open loop stopped waiting)."""

    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0


async def _send(
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None,
    run_started: float,
) -> RequestRecord:
    sent = time.perf_counter()
    try:
        response = await client.post(path, content=body, headers=headers, params=params)
    except httpx.HTTPError as exc:
        return RequestRecord(sent - run_started, time.perf_counter() - sent, None, 0, type(exc).__name__)
    return RequestRecord(sent - run_started, time.perf_counter() - sent, response.status_code, len(response.content))


def _check_bodies(bodies: Sequence[bytes]) -> None:
    if not bodies:
        raise ValueError("no request bodies to send")


async def closed_loop(
    url: str,
    bodies: Sequence[bytes],
    content_type: str,
    *,
    clients: int,
    requests: int | None = None,
    seconds: float | None = None,
    params: Mapping[str, str] | None = None,
    path: str = "/assess",
    timeout_s: float = 300.0,
) -> LoadRun:
    """``clients`` concurrent clients, each POSTing the next of ``bodies`` (round robin) to ``path`` as soon as
    its previous answer came, until ``requests`` have been sent or ``seconds`` have passed (whichever comes
    first; a request under way when time is up is still awaited)."""
    _check_bodies(bodies)
    if clients < 1:
        raise ValueError(f"clients must be at least 1, not {clients}")
    if requests is None and seconds is None:
        raise ValueError("closed_loop needs requests or seconds (or both) to know when to stop")
    headers = {"content-type": content_type}
    records: list[RequestRecord] = []
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        started = time.perf_counter()
        stop_at = started + seconds if seconds is not None else math.inf

        async def one_client() -> None:
            nonlocal issued
            while (requests is None or issued < requests) and time.perf_counter() < stop_at:
                body = bodies[issued % len(bodies)]
                issued += 1
                records.append(await _send(client, path, body, headers, params, started))

        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return LoadRun(sorted(records, key=lambda r: r.start_s), wall)


def poisson_arrivals(rate: float, seconds: float, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of a Poisson stream of ``rate`` per second: the first at 0, then
    exponential gaps, every one before ``seconds``. The same seed gives the same times."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    rng = random.Random(seed)
    times, at = [], 0.0
    while at < seconds:
        times.append(at)
        at += rng.expovariate(rate)
    return times


async def open_loop(
    url: str,
    bodies: Sequence[bytes],
    content_type: str,
    *,
    rate: float,
    seconds: float,
    seed: int = 0,
    params: Mapping[str, str] | None = None,
    path: str = "/assess",
    straggler_s: float = 20.0,
    max_connections: int = 512,
) -> LoadRun:
    """POST the next of ``bodies`` (round robin) at each of ``poisson_arrivals(rate, seconds, seed)``, whether or
    not earlier requests were answered; then wait at most ``straggler_s`` for the last answers and record the
    rest as ``abandoned``."""
    _check_bodies(bodies)
    headers = {"content-type": content_type}
    schedule = poisson_arrivals(rate, seconds, seed)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=min(64, max_connections))
    async with httpx.AsyncClient(base_url=url, timeout=seconds + straggler_s, limits=limits) as client:
        started = time.perf_counter()
        tasks: list[tuple[asyncio.Task[RequestRecord], float]] = []
        for i, at in enumerate(schedule):
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = bodies[i % len(bodies)]
            sent = time.perf_counter()
            tasks.append((asyncio.create_task(_send(client, path, body, headers, params, started)), sent))
        pending: set[asyncio.Task[RequestRecord]] = set()
        if tasks:
            _, pending = await asyncio.wait([task for task, _ in tasks], timeout=straggler_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        now = time.perf_counter()
        records = [
            RequestRecord(sent - started, now - sent, None, 0, "abandoned") if task in pending else task.result()
            for task, sent in tasks
        ]
        wall = now - started
    return LoadRun(records, wall)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]) of all values: the smallest value with at least q of them at or
    below it. None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarise(run: LoadRun) -> dict[str, Any]:
    """One run in numbers (unrounded): requests sent, count by outcome (HTTP status, or the error's name),
    200 answers, their throughput over the run's wall time, and p50/p95/p99/max/mean of their latency in ms."""
    ok_ms = [1000 * r.latency_s for r in run.records if r.status == 200]
    return {
        "requests": len(run.records),
        "statuses": dict(sorted(Counter(r.outcome for r in run.records).items())),
        "ok": len(ok_ms),
        "wall_s": run.wall_s,
        "throughput_rps": len(ok_ms) / run.wall_s if run.wall_s > 0 else None,
        "p50_ms": percentile(ok_ms, 0.50),
        "p95_ms": percentile(ok_ms, 0.95),
        "p99_ms": percentile(ok_ms, 0.99),
        "max_ms": max(ok_ms) if ok_ms else None,
        "mean_ms": statistics.fmean(ok_ms) if ok_ms else None,
        "response_bytes": sum(r.response_bytes for r in run.records),
    }


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
