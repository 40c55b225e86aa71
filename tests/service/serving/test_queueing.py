"""Batching, overload, deadlines, failures, disconnects and readiness through the real app and queues.

A ``Gate`` is installed through the app's ``batch_hook`` (called by each model's worker thread before a batch):
it records batch sizes and can hold the worker still or make a batch fail, so queue states are produced by the
real queue, not by a fake.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.app import create_app
from tests.helpers import heatmap_array, png_bytes, radiograph, running_app, settings_for, wait_ready

pytestmark = pytest.mark.timeout(180)


class Gate:
    def __init__(self, open_: bool = True) -> None:
        self.opened = threading.Event()
        if open_:
            self.opened.set()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []
        self.oldest_waits: list[float] = []  # seconds the oldest request of each batch had waited
        self.failure: Exception | None = None

    def __call__(self, model_name, batch) -> None:
        self.batch_sizes.append(len(batch))
        self.oldest_waits.append(time.monotonic() - min(p.enqueued_at for p in batch))
        self.entered.set()
        if not self.opened.wait(60):
            raise RuntimeError("test gate never opened")
        if self.failure is not None:
            raise self.failure


def body_of(seed: int) -> bytes:
    return png_bytes(radiograph(60 + 7 * seed, 80 + 5 * seed, seed=seed, spot=(10 + 3 * seed, 20 + 4 * seed)))


async def post(client, body: bytes, **params):
    return await client.post("/assess", params=params, content=body, headers={"content-type": "image/png"})


async def queue_depth_reaches(app, depth: int, timeout_s: float = 30.0) -> None:
    worker = app.state.registry.get("default")
    deadline = time.monotonic() + timeout_s
    while worker.queue_depth != depth:
        assert time.monotonic() < deadline, f"queue depth stayed {worker.queue_depth}, wanted {depth}"
        await asyncio.sleep(0.01)


def metric_value(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


REQUESTS = [  # (seed, params): a batch mixing methods and heatmap modes
    (1, {}),
    (2, {}),
    (3, {"method": "gradcam"}),
    (4, {"heatmap": "none"}),
]


def same_answer(batched: dict, single: dict) -> None:
    assert batched["probability"] == pytest.approx(single["probability"], abs=1e-5)
    assert batched["point"] == single["point"]
    assert batched["decision"] == single["decision"]
    if single["heatmap"] is None:
        assert batched["heatmap"] is None
    else:
        diff = heatmap_array(batched).astype(int) - heatmap_array(single).astype(int)
        assert np.abs(diff).max() <= 1


def test_concurrent_requests_form_one_batch_with_unchanged_answers(models_dir):
    async def scenario():
        single_app = create_app(settings_for(models_dir, max_batch_size=1, max_batch_wait_ms=0))
        async with running_app(single_app) as client:
            singles = [(await post(client, body_of(seed), **params)).json() for seed, params in REQUESTS]

        gate = Gate()
        # A long window: only a full batch can leave before it ends.
        batching_app = create_app(settings_for(models_dir, max_batch_size=4, max_batch_wait_ms=10_000), batch_hook=gate)
        async with running_app(batching_app) as client:
            before = (await client.get("/metrics")).text
            warmup_batches = len(gate.batch_sizes)
            responses = await asyncio.gather(*(post(client, body_of(seed), **params) for seed, params in REQUESTS))
            after = (await client.get("/metrics")).text
        return (
            singles,
            responses,
            gate.batch_sizes[warmup_batches:],
            gate.oldest_waits[warmup_batches:],
            before,
            after,
        )

    singles, responses, batch_sizes, oldest_waits, before, after = asyncio.run(scenario())
    assert batch_sizes == [4]
    assert oldest_waits[0] < 8.0  # left because it was full, not because the 10 s window ended
    count = 'normgate_batch_size_count{model="default"}'
    total = 'normgate_batch_size_sum{model="default"}'
    assert metric_value(after, count) - metric_value(before, count) == 1
    assert metric_value(after, total) - metric_value(before, total) == 4
    for response, single in zip(responses, singles):
        assert response.status_code == 200, response.text
        same_answer(response.json(), single)
        assert response.json()["timings_ms"]["queue"] >= 0


def test_partial_batch_leaves_after_max_wait(models_dir):
    async def scenario():
        gate = Gate()
        app = create_app(settings_for(models_dir, max_batch_size=8, max_batch_wait_ms=1500), batch_hook=gate)
        async with running_app(app) as client:
            n = len(gate.batch_sizes)
            started = time.monotonic()
            responses = await asyncio.gather(post(client, body_of(1)), post(client, body_of(2)))
            return time.monotonic() - started, responses, gate.batch_sizes[n:], gate.oldest_waits[n:]

    elapsed, responses, batch_sizes, oldest_waits = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200, 200]
    assert batch_sizes == [2]
    assert 1.5 <= oldest_waits[0] < 5.0 and elapsed >= 1.5
    assert max(r.json()["timings_ms"]["queue"] for r in responses) >= 1499


def test_full_queue_answers_503_with_retry_after(models_dir):
    async def scenario():
        gate = Gate()
        app = create_app(
            settings_for(models_dir, max_batch_size=1, max_batch_wait_ms=0, max_queue_size=2), batch_hook=gate
        )
        async with running_app(app) as client:
            n = len(gate.batch_sizes)
            gate.opened.clear()
            gate.entered.clear()
            running = asyncio.ensure_future(post(client, body_of(1)))
            assert await asyncio.to_thread(gate.entered.wait, 30)  # the worker holds request 1
            queued = [asyncio.ensure_future(post(client, body_of(s))) for s in (2, 3)]
            await queue_depth_reaches(app, 2)
            refused = await post(client, body_of(4))
            depth_metric = metric_value((await client.get("/metrics")).text, "normgate_queue_depth", 'model="default"')
            gate.opened.set()
            answered = await asyncio.gather(running, *queued)
            rejected = metric_value(
                (await client.get("/metrics")).text, "normgate_rejected_total", 'reason="overloaded"'
            )
            return refused, depth_metric, answered, gate.batch_sizes[n:], rejected

    refused, depth_metric, answered, batch_sizes, rejected = asyncio.run(scenario())
    assert refused.status_code == 503
    assert refused.json()["error"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert depth_metric == 2
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert batch_sizes == [1, 1, 1]  # the refused request was never computed
    assert rejected == 1


def test_deadline_passed_in_queue_answers_504_and_is_never_computed(models_dir):
    async def scenario():
        gate = Gate()
        app = create_app(
            settings_for(models_dir, max_batch_size=1, max_batch_wait_ms=0, request_timeout_ms=1500), batch_hook=gate
        )
        async with running_app(app) as client:
            n = len(gate.batch_sizes)
            gate.opened.clear()
            gate.entered.clear()
            running = asyncio.ensure_future(post(client, body_of(1)))
            assert await asyncio.to_thread(gate.entered.wait, 30)
            started = time.monotonic()
            late = await post(client, body_of(2))
            waited = time.monotonic() - started
            depth = app.state.registry.get("default").queue_depth
            gate.opened.set()
            first = await running
            return late, waited, depth, first, gate.batch_sizes[n:]

    late, waited, depth, first, batch_sizes = asyncio.run(scenario())
    assert late.status_code == 504
    assert late.json()["error"] == "timeout"
    assert 1.0 <= waited < 10
    assert depth == 0  # its slot was freed at once
    assert first.status_code == 200  # started before its deadline: answered, even if late
    assert batch_sizes == [1]


def test_a_failing_batch_answers_500_to_each_of_its_requests_and_the_next_batch_works(models_dir):
    async def scenario():
        gate = Gate()
        app = create_app(settings_for(models_dir, max_batch_size=2, max_batch_wait_ms=8_000), batch_hook=gate)
        async with running_app(app) as client:
            gate.failure = RuntimeError("injected batch failure")
            failed = await asyncio.gather(post(client, body_of(1)), post(client, body_of(2)))
            gate.failure = None
            recovered = await asyncio.gather(post(client, body_of(3)), post(client, body_of(4)))
            ready = await client.get("/readyz")
            return failed, recovered, ready

    failed, recovered, ready = asyncio.run(scenario())
    ids = set()
    for response in failed:
        assert response.status_code == 500
        body = response.json()
        assert body["error"] == "internal"
        assert body["request_id"] == response.headers["x-request-id"]
        assert "injected" not in response.text and "Traceback" not in response.text
        ids.add(body["request_id"])
    assert len(ids) == 2
    assert [r.status_code for r in recovered] == [200, 200]
    assert ready.status_code == 200


def test_client_disconnect_frees_its_slot_and_is_never_computed(models_dir):
    body = body_of(2)

    async def call_and_disconnect(app, disconnect: asyncio.Event) -> list[dict]:
        """Drive the ASGI app directly: send the body, then hang up when told."""
        sent_body = False
        messages = []

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            messages.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/assess",
            "raw_path": b"/assess",
            "query_string": b"",
            "root_path": "",
            "client": ("127.0.0.1", 5000),
            "server": ("normgate", 80),
            "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())],
        }
        await app(scope, receive, send)
        return messages

    async def scenario():
        gate = Gate()
        app = create_app(
            settings_for(models_dir, max_batch_size=1, max_batch_wait_ms=0, max_queue_size=1), batch_hook=gate
        )
        async with running_app(app) as client:
            n = len(gate.batch_sizes)
            gate.opened.clear()
            gate.entered.clear()
            running = asyncio.ensure_future(post(client, body_of(1)))
            assert await asyncio.to_thread(gate.entered.wait, 30)
            hang_up = asyncio.Event()
            leaving = asyncio.ensure_future(call_and_disconnect(app, hang_up))
            await queue_depth_reaches(app, 1)
            hang_up.set()
            messages = await asyncio.wait_for(leaving, 10)
            await queue_depth_reaches(app, 0)
            replacement = asyncio.ensure_future(post(client, body_of(3)))  # the freed slot takes a request
            await queue_depth_reaches(app, 1)
            gate.opened.set()
            return messages, await running, await replacement, gate.batch_sizes[n:]

    messages, first, replacement, batch_sizes = asyncio.run(scenario())
    assert messages[0]["status"] == 499
    assert first.status_code == 200 and replacement.status_code == 200
    assert batch_sizes == [1, 1]  # request 1 and the replacement; the one that left was never computed


def test_readiness_only_after_warm_up(models_dir):
    async def scenario():
        gate = Gate(open_=False)  # holds the warm-up batch
        app = create_app(settings_for(models_dir), batch_hook=gate)
        async with running_app(app, ready=False) as client:
            health = await client.get("/healthz")
            assert await asyncio.to_thread(gate.entered.wait, 60)
            not_ready = await client.get("/readyz")
            refused = await post(client, body_of(1))
            gate.opened.set()
            await wait_ready(client)
            ready = await client.get("/readyz")
            served = await post(client, body_of(1))
            return health, not_ready, refused, ready, served

    health, not_ready, refused, ready, served = asyncio.run(scenario())
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert not_ready.status_code == 503 and not_ready.json()["error"] == "not_ready"
    assert "warming_up" in not_ready.json()["detail"]
    assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": {"default": "ready", "wide": "ready"}}
    assert served.status_code == 200


def test_broken_checkpoint_keeps_the_service_unready(tmp_path, models_dir):
    import shutil

    shutil.copytree(models_dir / "default", tmp_path / "default")
    (tmp_path / "default" / "model.safetensors").write_bytes(b"not safetensors")

    async def scenario():
        app = create_app(settings_for(tmp_path))
        async with running_app(app, ready=False) as client:
            deadline = time.monotonic() + 30
            while app.state.registry.get("default").state != "failed":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            return await client.get("/readyz"), await client.get("/healthz")

    readyz, healthz = asyncio.run(scenario())
    assert readyz.status_code == 503
    assert "safetensors" in readyz.json()["detail"]
    assert healthz.status_code == 200


def test_misconfiguration_stops_startup_with_a_sentence(tmp_path, models_dir):
    async def start(settings):
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match="NORMGATE_DEFAULT_MODEL='missing'"):
        asyncio.run(start(settings_for(models_dir, default_model="missing")))
    with pytest.raises(RuntimeError, match="no checkpoint folders"):
        asyncio.run(start(settings_for(tmp_path)))


def test_shutdown_stops_accepting_and_answers_everything_already_queued(models_dir):
    async def scenario():
        gate = Gate()
        app = create_app(settings_for(models_dir, max_batch_size=1, max_batch_wait_ms=0), batch_hook=gate)
        async with running_app(app) as client:
            registry = app.state.registry
            n = len(gate.batch_sizes)
            gate.opened.clear()
            gate.entered.clear()
            running = asyncio.ensure_future(post(client, body_of(1)))
            assert await asyncio.to_thread(gate.entered.wait, 30)
            queued = asyncio.ensure_future(post(client, body_of(2)))
            await queue_depth_reaches(app, 1)
            stopping = asyncio.ensure_future(asyncio.to_thread(registry.stop, 60))
            while registry.get("default").accepting:
                await asyncio.sleep(0.01)
            refused = await post(client, body_of(3))
            gate.opened.set()
            answered = await asyncio.gather(running, queued)
            await stopping
            return refused, answered, gate.batch_sizes[n:]

    refused, answered, batch_sizes = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
    assert "shutting down" in refused.json()["detail"]
    assert [r.status_code for r in answered] == [200, 200]
    assert batch_sizes == [1, 1]
