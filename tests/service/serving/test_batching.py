"""The batching queue on its own: when batches leave, what happens to failed, cancelled and expired requests."""

from __future__ import annotations

import math
import threading
import time

import pytest

from service.serving.batching import BatchQueue, DeadlineExceeded, QueueClosed, QueueFull, run_batch, serve_forever


def put_many(queue: BatchQueue, n: int, deadline: float = math.inf):
    return [queue.put(i, deadline) for i in range(n)]


def test_full_batch_leaves_immediately():
    queue = BatchQueue(max_batch_size=4, max_wait_s=10.0, max_size=16)
    put_many(queue, 6)
    started = time.monotonic()
    batch = queue.next_batch()
    assert time.monotonic() - started < 1.0  # not the 10 s wait
    assert [p.payload for p in batch] == [0, 1, 2, 3]
    assert all(p.future.running() for p in batch)
    assert len(queue) == 2


def test_partial_batch_leaves_after_the_oldest_has_waited():
    queue = BatchQueue(max_batch_size=8, max_wait_s=0.3, max_size=16)
    first = queue.put("a", math.inf)
    time.sleep(0.1)
    queue.put("b", math.inf)
    batch = queue.next_batch()
    waited = time.monotonic() - first.enqueued_at
    assert [p.payload for p in batch] == ["a", "b"]
    assert 0.3 <= waited < 1.5  # measured from the oldest request, not from the second one


def test_zero_wait_takes_what_is_there():
    queue = BatchQueue(max_batch_size=8, max_wait_s=0.0, max_size=16)
    put_many(queue, 3)
    assert [p.payload for p in queue.next_batch()] == [0, 1, 2]


def test_bounded_queue_refuses_instead_of_waiting():
    queue = BatchQueue(max_batch_size=2, max_wait_s=0.0, max_size=3)
    put_many(queue, 3)
    with pytest.raises(QueueFull):
        queue.put("one too many", math.inf)
    queue.next_batch()  # frees two slots
    queue.put("fits again", math.inf)


def test_exception_reaches_every_future_of_the_batch_and_the_loop_goes_on():
    queue = BatchQueue(max_batch_size=3, max_wait_s=0.0, max_size=16)
    first = put_many(queue, 3)

    def handle(batch):
        if batch[0].payload == "ok":
            return [p.payload.upper() for p in batch]
        raise RuntimeError("model exploded")

    worker = threading.Thread(target=serve_forever, args=(queue, handle), daemon=True)
    worker.start()
    for pending in first:
        with pytest.raises(RuntimeError, match="model exploded"):
            pending.future.result(timeout=10)
    second = queue.put("ok", math.inf)
    assert second.future.result(timeout=10) == "OK"
    queue.close()
    worker.join(10)
    assert not worker.is_alive()


def test_per_request_exception_stays_with_its_request():
    queue = BatchQueue(max_batch_size=2, max_wait_s=0.0, max_size=4)
    a, b = put_many(queue, 2)
    run_batch(queue.next_batch(), lambda batch: ["fine", ValueError("this image only")])
    assert a.future.result(0) == "fine"
    with pytest.raises(ValueError, match="this image only"):
        b.future.result(0)


def test_wrong_result_count_fails_the_whole_batch():
    queue = BatchQueue(max_batch_size=2, max_wait_s=0.0, max_size=4)
    a, b = put_many(queue, 2)
    run_batch(queue.next_batch(), lambda batch: ["only one"])
    for pending in (a, b):
        with pytest.raises(RuntimeError, match="1 results for 2 requests"):
            pending.future.result(0)


def test_withdrawn_request_is_skipped_and_frees_its_slot():
    queue = BatchQueue(max_batch_size=4, max_wait_s=0.0, max_size=2)
    a, _b = put_many(queue, 2)
    assert queue.withdraw(a) is True
    assert len(queue) == 1
    queue.put("c", math.inf)  # the freed slot is usable at once
    batch = queue.next_batch()
    assert [p.payload for p in batch] == [1, "c"]
    assert a.future.cancelled()


def test_cancelled_future_without_withdraw_is_never_computed():
    queue = BatchQueue(max_batch_size=4, max_wait_s=0.0, max_size=4)
    a, _b = put_many(queue, 2)
    assert a.future.cancel()
    computed = []
    run_batch(queue.next_batch(), lambda batch: [computed.append(p.payload) or p.payload for p in batch])
    assert computed == [1]


def test_started_request_cannot_be_withdrawn():
    queue = BatchQueue(max_batch_size=1, max_wait_s=0.0, max_size=4)
    a = queue.put("a", math.inf)
    queue.next_batch()
    assert queue.withdraw(a) is False
    assert not a.future.cancelled()


def test_expired_request_gets_deadline_exceeded_and_is_not_computed():
    queue = BatchQueue(max_batch_size=4, max_wait_s=0.0, max_size=4)
    expired = queue.put("late", time.monotonic() - 0.001)
    alive = queue.put("on time", math.inf)
    batch = queue.next_batch()
    assert batch == [alive]
    with pytest.raises(DeadlineExceeded):
        expired.future.result(0)


def test_close_drains_then_stops():
    queue = BatchQueue(max_batch_size=2, max_wait_s=60.0, max_size=4)
    a = queue.put("a", math.inf)
    queue.close()
    with pytest.raises(QueueClosed):
        queue.put("b", math.inf)
    assert queue.next_batch() == [a]  # closing does not wait out the 60 s batch window
    assert queue.next_batch() is None


def test_depth_callback_follows_the_queue():
    depths = []
    queue = BatchQueue(max_batch_size=2, max_wait_s=0.0, max_size=4, on_depth_change=depths.append)
    _a, _b, c = put_many(queue, 3)
    queue.withdraw(c)
    queue.next_batch()
    assert depths == [1, 2, 3, 2, 0]


def test_worker_blocked_until_a_request_arrives():
    queue = BatchQueue(max_batch_size=4, max_wait_s=0.05, max_size=4)
    results = []
    consumer = threading.Thread(target=lambda: results.append(queue.next_batch()), daemon=True)
    consumer.start()
    time.sleep(0.2)
    assert results == []
    pending = queue.put("x", math.inf)
    consumer.join(5)
    assert results == [[pending]]
