"""Faults inside the model worker, through the real app: a model that raises in the middle of a forward pass,
out-of-memory on a batch (split and retried, then 503), and the worker thread dying (not ready, restarted,
what was queued still answered). Each case lands in docs/fault-table.md.

Faults are injected where they happen in production: torch hooks on the loaded model (its forward raises,
like a CUDA error or an allocator failure would) and the app's ``batch_hook`` (runs in the worker thread, so a
``BaseException`` raised there escapes the serving loop like a bug in it would). Related tests elsewhere: a
failing batch via the hook (test_queueing.py), an evaluation job killed with SIGKILL and resumed
(test_evaluate.py::test_resume_after_sigkill_gives_each_row_once_and_the_uninterrupted_counts).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from service.app import create_app
from tests.helpers import png_bytes, radiograph, running_app, settings_for, wait_ready
from tests.service.fault_table import outcome

pytestmark = pytest.mark.timeout(180)


def body_of(seed: int) -> bytes:
    return png_bytes(radiograph(50 + 5 * seed, 70 + 3 * seed, seed=seed, spot=(12 + 2 * seed, 20 + 3 * seed)))


async def post(client, body: bytes):
    return await client.post("/assess", content=body, headers={"content-type": "image/png"})


def answer(response) -> tuple:
    """What must not change when an image is computed in another batch: decision, probability to 1e-4 (a batch
    of 1 and of 4 take different CPU kernels, equal up to float rounding), and that a peak point is given."""
    body = response.json()
    return body["decision"], round(body["probability"], 4), body["point"] is not None


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_model_that_raises_mid_batch_fails_that_batch_only(models_dir, fault_row):
    failing = threading.Event()

    def raise_in_layer3(module, inputs, output):
        if failing.is_set():
            raise RuntimeError("injected fault in layer3 (secret-internal-detail)")

    async def scenario():
        app = create_app(settings_for(models_dir, max_batch_size=3, max_batch_wait_ms=5_000))
        async with running_app(app) as client:
            reference = await asyncio.gather(*(post(client, body_of(i)) for i in range(3)))
            model = app.state.registry.get("default").runner.model
            handle = model.layer3.register_forward_hook(raise_in_layer3)
            try:
                failing.set()
                failed = await asyncio.gather(*(post(client, body_of(i)) for i in range(3)))
                failing.clear()
                recovered = await asyncio.gather(*(post(client, body_of(i)) for i in range(3)))
            finally:
                handle.remove()
            return reference, failed, recovered, await client.get("/readyz")

    reference, failed, recovered, ready = asyncio.run(scenario())
    fault_row(
        "model faults",
        "model raises inside layer3 during a batch of 3",
        "500 internal ×3, each with its own request_id",
        "500 internal ×3, each with its own request_id"
        if [outcome(r) for r in failed] == ["500 internal"] * 3
        and len({r.json().get("request_id") for r in failed}) == 3
        else ", ".join(outcome(r) for r in failed),
    )
    ids = set()
    for response in failed:
        assert response.status_code == 500 and response.json()["error"] == "internal"
        assert response.json()["request_id"] == response.headers["x-request-id"]
        assert "secret-internal-detail" not in response.text and "Traceback" not in response.text
        ids.add(response.json()["request_id"])
    assert len(ids) == 3
    fault_row(
        "model faults",
        "the next batch after the failing one",
        "200 ×3, same answers as before",
        "200 ×3, same answers as before"
        if [answer(r) for r in recovered] == [answer(r) for r in reference]
        else "different",
    )
    assert [r.status_code for r in recovered] == [200, 200, 200]
    assert [answer(r) for r in recovered] == [answer(r) for r in reference]
    assert ready.status_code == 200


class OutOfMemoryAbove:
    """A forward pre-hook: the model 'runs out of memory' on any batch larger than ``limit`` images."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def __call__(self, module, inputs):
        size = inputs[0].shape[0]
        self.sizes.append(size)
        if size > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {size} GiB (injected)")


def test_out_of_memory_splits_the_batch_then_answers_503_for_a_single_image(models_dir, fault_row):
    async def scenario():
        app = create_app(settings_for(models_dir, max_batch_size=4, max_batch_wait_ms=2_000))
        async with running_app(app) as client:
            bodies = [body_of(i) for i in range(4)]
            reference = await asyncio.gather(*(post(client, b) for b in bodies))
            model = app.state.registry.get("default").runner.model
            oom = OutOfMemoryAbove(limit=1)
            handle = model.register_forward_pre_hook(oom)
            try:
                split = await asyncio.gather(*(post(client, b) for b in bodies))
                split_sizes = list(oom.sizes)
                oom.limit = 0
                single = await post(client, bodies[0])
            finally:
                handle.remove()
            after = await post(client, bodies[0])
            metrics = (await client.get("/metrics")).text
            return reference, split, split_sizes, single, after, metrics

    reference, split, sizes, single, after, metrics = asyncio.run(scenario())
    observed = (
        "200 ×4, same answers"
        if [answer(r) for r in split] == [answer(r) for r in reference]
        else ", ".join(outcome(r) for r in split)
    )
    fault_row(
        "model faults",
        "out of memory on batches larger than 1 (batch of 4)",
        "split 4 → 2+2 → 1+1+1+1; 200 ×4, same answers",
        f"split {'4 → 2+2 → 1+1+1+1' if sizes == [4, 2, 1, 1, 2, 1, 1] else sizes}; {observed}",
    )
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    assert [r.status_code for r in split] == [200] * 4
    assert [answer(r) for r in split] == [answer(r) for r in reference]
    fault_row("model faults", "out of memory on a single image", "503 overloaded", outcome(single))
    assert single.status_code == 503 and single.json()["error"] == "overloaded"
    assert int(single.headers["retry-after"]) >= 1
    assert "injected" not in single.text
    assert after.status_code == 200 and answer(after) == answer(reference[0])
    assert metric(metrics, 'normgate_out_of_memory_total{model="default"}') == 4  # 4, 2, 2, then the single


class WorkerCrash(BaseException):
    """Not an ``Exception``: escapes ``run_batch``'s handler like a bug in the serving loop would."""


class CrashOnce:
    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.computed: list[int] = []  # id of every payload whose batch was handed to the model

    def __call__(self, model_name, batch) -> None:
        if model_name != "default":
            return
        self.entered.set()
        assert self.release.wait(60)
        if self.armed:
            self.armed = False
            raise WorkerCrash("injected: the serving loop dies")
        self.computed.extend(id(p.payload) for p in batch)


def test_worker_thread_death_makes_the_model_unready_until_the_supervisor_restarts_it(models_dir, fault_row):
    crash = CrashOnce()

    async def scenario():
        app = create_app(
            settings_for(
                models_dir, max_batch_size=1, max_batch_wait_ms=0, max_queue_size=8, worker_restart_delay_s=1.5
            ),
            batch_hook=crash,
        )
        async with running_app(app) as client:
            worker = app.state.registry.get("default")
            crash.release.clear()
            crash.entered.clear()
            crash.armed = True
            in_flight = asyncio.ensure_future(post(client, body_of(1)))
            assert await asyncio.to_thread(crash.entered.wait, 30)
            queued = [asyncio.ensure_future(post(client, body_of(i))) for i in (2, 3)]
            deadline = time.monotonic() + 30
            while worker.queue_depth < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            computed_before = len(crash.computed)
            crash.release.set()  # the in-flight batch's hook now raises WorkerCrash
            died = await in_flight
            while_dead = await client.get("/readyz")
            refused = await post(client, body_of(4))
            answered = await asyncio.gather(*queued)
            await wait_ready(client, 30)
            ready = await client.get("/readyz")
            after = await post(client, body_of(5))
            metrics = (await client.get("/metrics")).text
            return (died, while_dead, refused, answered, ready, after, metrics, len(crash.computed) - computed_before)

    died, while_dead, refused, answered, ready, after, metrics, computed = asyncio.run(scenario())
    fault_row(
        "worker death", "an exception escapes the serving loop: the batch in flight", "500 internal", outcome(died)
    )
    assert died.status_code == 500 and died.json()["error"] == "internal"
    assert "injected" not in died.text
    fault_row("worker death", "/readyz while the worker is dead", "503 not_ready", outcome(while_dead))
    assert while_dead.status_code == 503 and "worker thread died" in while_dead.json()["detail"]
    fault_row("worker death", "a new /assess while the worker is dead", "503 not_ready", outcome(refused))
    assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
    fault_row(
        "worker death",
        "requests queued before the death",
        "200 ×2 after the restart",
        ("200 ×2" if [outcome(r) for r in answered] == ["200", "200"] else " ".join(outcome(r) for r in answered))
        + " after the restart",
    )
    assert [r.status_code for r in answered] == [200, 200]
    assert computed == 3  # the two queued ones and the one after the restart, each once
    assert ready.status_code == 200 and after.status_code == 200
    assert metric(metrics, 'normgate_worker_restarts_total{model="default"}') == 1
