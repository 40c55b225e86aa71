"""The shared load driver (load_tests/driver.py): /metrics parsing, the closed and open loops against a stub HTTP
server on loopback (a thread in this process), the summary against numbers computed here, and the server
lifecycle with small stand-in servers (a few lines of Python, not the model server)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from load_tests.driver import (
    LoadRun,
    RequestRecord,
    base_url,
    closed_loop,
    free_port,
    histogram_means,
    metrics_delta,
    open_loop,
    percentile,
    poisson_arrivals,
    served,
    server_env,
    start_process,
    start_server,
    stop_process,
    summarise,
)
from tests.load_tests.canned import AFTER, BEFORE

# -- /metrics ---------------------------------------------------------------------------------------------------


def test_metrics_delta_counts_only_the_run():
    delta = metrics_delta(BEFORE, AFTER)
    assert delta["batches"] == 3
    assert delta["mean_batch_size"] == 3.0  # (4 + 3 + 2) / 3, warm-up batches left out
    assert delta["mean_queue_wait_ms"] == pytest.approx(100.0)  # 0.9 s over 9 requests
    assert delta["stage_mean_ms"]["decode"] == pytest.approx(100.0)
    assert delta["stage_mean_ms"]["forward_backward"] is None  # not in the scrape
    assert delta["rejected"] == {"overloaded": 1}


def test_histogram_means_per_histogram_and_stage():
    means = histogram_means(BEFORE, AFTER)
    assert means == pytest.approx(
        {
            "batch_size": 3.0,  # 9 requests in 3 batches
            "queue_wait_seconds": 0.1,  # 0.9 s over 9 requests
            "compute_duration_seconds[decode]": 0.1,  # (1.1 - 0.2) s over 9 uploads
        }
    )  # request duration left out by default; the rejection counter is no histogram
    assert "request_duration_seconds" in histogram_means(BEFORE, AFTER, exclude=())
    assert histogram_means(AFTER, AFTER) == {}  # nothing observed in between


# -- percentiles and the summary ------------------------------------------------------------------------------


def test_percentile_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.99) == 5.0
    assert percentile([float(v) for v in range(1, 101)], 0.95) == 95.0
    assert percentile([float(v) for v in range(1, 101)], 0.99) == 99.0
    values = list(np.random.default_rng(0).exponential(100.0, 37))
    for q in (0.0, 0.01, 0.5, 0.95, 0.99, 1.0):  # numpy's inverted CDF is the nearest-rank definition
        assert percentile(values, q) == np.percentile(values, 100 * q, method="inverted_cdf")


def test_summarise_counts_outcomes_and_times_only_200_answers():
    ok_s = [0.05 * k for k in range(1, 21)]  # 50 ms … 1000 ms
    records = [RequestRecord(0.1 * i, s, 200, 1000) for i, s in enumerate(ok_s)]
    records += [
        RequestRecord(2.0, 0.001, 503, 80),  # fast errors must not pull the percentiles down
        RequestRecord(2.1, 0.002, 415, 90),
        RequestRecord(2.2, 30.0, None, 0, "ReadTimeout"),
        RequestRecord(2.3, 5.0, None, 0, "abandoned"),
    ]
    summary = summarise(LoadRun(records, wall_s=8.0))
    ok_ms = [1000 * s for s in ok_s]
    assert summary["requests"] == 24
    assert summary["statuses"] == {"200": 20, "415": 1, "503": 1, "ReadTimeout": 1, "abandoned": 1}
    assert summary["ok"] == 20
    assert summary["throughput_rps"] == pytest.approx(20 / 8.0)
    for key, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
        assert summary[key] == pytest.approx(np.percentile(ok_ms, q, method="inverted_cdf"))
    assert summary["max_ms"] == pytest.approx(1000.0)
    assert summary["mean_ms"] == pytest.approx(statistics.fmean(ok_ms))
    assert summary["response_bytes"] == 20 * 1000 + 80 + 90
    empty = summarise(LoadRun([RequestRecord(0.0, 0.1, 503, 10)], wall_s=1.0))
    assert (empty["ok"], empty["p50_ms"], empty["mean_ms"], empty["throughput_rps"]) == (0, None, None, 0.0)


# -- the loops against a stub server ---------------------------------------------------------------------------


class StubHandler(BaseHTTPRequestHandler):
    """POST /assess: sleeps ``delay_ms`` (query) or 3 s for the body ``slow``; answers 415 to text/plain, else
    200 with the body repeated 3 times. Records what it saw and the most requests it held at once."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the service
    lock = threading.Lock()
    seen: list[dict]
    in_flight = 0
    max_in_flight = 0

    def do_POST(self) -> None:
        cls = type(self)
        body = self.rfile.read(int(self.headers["content-length"]))
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        with cls.lock:
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
            cls.seen.append({"body": body, "type": self.headers["content-type"], "query": query})
        try:
            time.sleep(3.0 if body == b"slow" else float(query.get("delay_ms", 0)) / 1000)
            status, answer = (415, b"no") if self.headers["content-type"] == "text/plain" else (200, body * 3)
            self.send_response(status)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def stub():
    class Handler(StubHandler):
        seen: list[dict] = []  # noqa: RUF012  (one list per test: a fresh subclass)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.handle_error = lambda request, address: None  # abandoned requests' broken pipes
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield base_url("127.0.0.1", httpd.server_address[1]), Handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_closed_loop_sends_a_fixed_number_of_requests_with_n_clients(stub):
    url, handler = stub
    bodies = [b"a", b"bb", b"ccc"]
    run = asyncio.run(
        closed_loop(url, bodies, "image/png", clients=3, requests=10, params={"delay_ms": "150", "heatmap": "none"})
    )
    assert len(run.records) == 10 and len(handler.seen) == 10
    assert handler.max_in_flight == 3  # three clients, each with one request at a time
    assert Counter(s["body"] for s in handler.seen) == {b"a": 4, b"bb": 3, b"ccc": 3}  # round robin
    assert {s["type"] for s in handler.seen} == {"image/png"}
    assert all(s["query"] == {"delay_ms": "150", "heatmap": "none"} for s in handler.seen)
    assert all(r.status == 200 and r.error is None and r.latency_s >= 0.15 for r in run.records)
    assert sorted(r.response_bytes for r in run.records) == sorted(3 * len(s["body"]) for s in handler.seen)
    assert [r.start_s for r in run.records] == sorted(r.start_s for r in run.records)
    # 10 requests of 150 ms in waves of 3: at least 4 waves; the wall time covers every answer.
    assert run.wall_s >= 4 * 0.15 and run.wall_s >= max(r.start_s + r.latency_s for r in run.records) - 1e-6
    assert summarise(run)["throughput_rps"] == pytest.approx(10 / run.wall_s)


def test_closed_loop_stops_at_its_time_budget(stub):
    url, handler = stub
    run = asyncio.run(closed_loop(url, [b"x"], "text/plain", clients=2, seconds=0.3, params={"delay_ms": "50"}))
    assert all(r.start_s < 0.3 for r in run.records)  # nothing sent after the budget
    assert 2 <= len(run.records) <= 2 * 0.3 / 0.05 + 2  # each client sent back to back
    assert 0.3 <= run.wall_s < 0.3 + 1.0  # the last answers were awaited, then it stopped
    assert summarise(run)["statuses"] == {"415": len(run.records)} and len(handler.seen) == len(run.records)
    with pytest.raises(ValueError, match="requests or seconds"):
        asyncio.run(closed_loop(url, [b"x"], "text/plain", clients=1))


def test_transport_errors_are_recorded_not_raised():
    url = base_url("127.0.0.1", free_port())  # nobody listens there
    run = asyncio.run(closed_loop(url, [b"x"], "image/png", clients=2, requests=3))
    assert [(r.status, r.error, r.response_bytes) for r in run.records] == [(None, "ConnectError", 0)] * 3
    assert summarise(run)["statuses"] == {"ConnectError": 3}


def test_poisson_arrivals_rate_gaps_and_seed():
    times = poisson_arrivals(rate=200.0, seconds=50.0, seed=3)
    gaps = np.diff(times)
    assert times[0] == 0.0 and times[-1] < 50.0 and np.all(gaps >= 0)
    assert len(times) == pytest.approx(200 * 50, rel=0.05)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps: std = mean
    assert poisson_arrivals(200.0, 50.0, seed=3) == times and poisson_arrivals(200.0, 50.0, seed=4) != times


def test_open_loop_keeps_its_schedule_and_abandons_stragglers(stub):
    url, handler = stub
    rate, seconds, seed = 20.0, 0.5, 1
    schedule = poisson_arrivals(rate, seconds, seed)
    assert len(schedule) >= 6
    run = asyncio.run(
        open_loop(url, [b"fast", b"slow"], "image/png", rate=rate, seconds=seconds, seed=seed, straggler_s=0.6)
    )
    assert len(run.records) == len(schedule) == len(handler.seen)
    # Sent on schedule although every second request was still unanswered (open loop): all of them before
    # the first slow answer could have come (a busy machine delays the event loop, hence the tolerance).
    assert [r.start_s for r in run.records] == pytest.approx(schedule, abs=0.25)
    assert max(r.start_s for r in run.records) < 3.0
    for i, record in enumerate(run.records):
        if i % 2 == 0:
            assert (record.status, record.response_bytes) == (200, 12)
        else:  # 3 s of work, only 0.6 s of patience after the last send
            assert (record.status, record.error) == (None, "abandoned")
    assert schedule[-1] + 0.6 <= run.wall_s < 3.0  # waited the straggler time, not for the slow answers
    summary = summarise(run)
    assert summary["statuses"] == {"200": (len(schedule) + 1) // 2, "abandoned": len(schedule) // 2}


# -- lifecycle with stand-in servers ---------------------------------------------------------------------------

# Serves /readyz (503 for its first 0.3 s, then 200) and /env (its NORMGATE_* variables) where NORMGATE_HOST and
# NORMGATE_PORT say, as `python -m service` would.
STAND_IN = r"""
import json, os, time
from http.server import BaseHTTPRequestHandler, HTTPServer
born = time.monotonic()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/env":
            status, body = 200, json.dumps({k: v for k, v in os.environ.items() if k.startswith("NORMGATE_")})
        else:
            status, body = (200 if time.monotonic() - born > 0.3 else 503), "{}"
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())
    def log_message(self, *args):
        pass
print("listening", flush=True)
HTTPServer((os.environ["NORMGATE_HOST"], int(os.environ["NORMGATE_PORT"])), H).serve_forever()
"""


def test_server_env_takes_settings_and_nothing_from_the_shell(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMGATE_API_KEYS", "from-the-shell")
    env = server_env(tmp_path, 8123, max_batch_size=8, torch_threads=None, decode_nice=10)
    assert {k: v for k, v in env.items() if k.startswith("NORMGATE_")} == {
        "NORMGATE_HOST": "127.0.0.1",
        "NORMGATE_PORT": "8123",
        "NORMGATE_MODELS_DIR": str(tmp_path),
        "NORMGATE_DEVICE": "cpu",
        "NORMGATE_MAX_BATCH_SIZE": "8",
        "NORMGATE_DECODE_NICE": "10",
    }
    assert server_env(tmp_path, 1, device="cuda")["NORMGATE_DEVICE"] == "cuda"
    with pytest.raises(ValueError, match="not a loopback"):
        server_env(tmp_path, 8123, host="0.0.0.0")


def test_served_starts_waits_for_readyz_and_stops(tmp_path):
    log = tmp_path / "logs" / "server.log"
    with served(tmp_path, log, command=[sys.executable, "-c", STAND_IN], max_batch_size=4) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200  # waited through the 503s
        env = httpx.get(f"{server.url}/env").json()
        assert env["NORMGATE_MAX_BATCH_SIZE"] == "4" and env["NORMGATE_MODELS_DIR"] == str(tmp_path)
        process = server.process
    assert process.poll() is not None  # stopped on leaving the block
    assert "listening" in log.read_text()


def test_an_early_exit_is_reported_with_the_log(tmp_path):
    log = tmp_path / "server.log"
    crash = "import sys; print('models dir /nowhere does not exist'); sys.exit(3)"
    with (
        pytest.raises(RuntimeError, match=r"exited with code 3(.|\n)*models dir /nowhere does not exist"),
        served(tmp_path, log, command=[sys.executable, "-c", crash]),
    ):
        pass
    # One that never becomes ready: the timeout names the last answer and the log.
    never = STAND_IN.replace("> 0.3", "> 1e9")
    with (
        start_server(tmp_path, tmp_path / "never.log", command=[sys.executable, "-c", never]) as server,
        pytest.raises(RuntimeError, match=r"not 200 after 0.5 s \(last: status 503: \{\}\); see .*never.log"),
    ):
        server.wait_ready(timeout_s=0.5)


def test_stop_process_kills_what_ignores_sigint(tmp_path):
    log = tmp_path / "stubborn.log"
    stubborn = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('set', flush=True); time.sleep(60)"
    )
    process = start_process([sys.executable, "-c", stubborn], log)
    deadline = time.monotonic() + 10
    while "set" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    stop_process(process, grace_s=0.3)
    assert process.returncode == -9  # SIGKILL after the grace time
    assert time.monotonic() - started < 5
