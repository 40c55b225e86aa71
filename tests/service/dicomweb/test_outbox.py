"""The durable outbox (SQLite), its sender (backoff, max age, restarts) and the STOW-RS delivery attempt.

The sender is driven with a scripted ``deliver`` and a controllable wall clock; the DICOMweb delivery with an
httpx mock transport. The end-to-end outage test with a real Orthanc is tests/service/dicomweb/test_orthanc_outage.py.
"""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import pytest

from service.dicomweb.multipart import parse_multipart_related, stow_boundary
from service.dicomweb.outbox import Delivery, OutboxItem, OutboxSender, SqliteOutbox
from service.dicomweb.push import DicomwebPush
from service.observability.metrics import ServiceMetrics

REFERENCED, FAILED, REASON = "00081199", "00081198", "00081197"


# ---------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------


def test_sets_survive_closing_and_reopening_the_file(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite3"
    outbox = SqliteOutbox(path, max_sets=10)
    assert outbox.add("dicomweb", ["1.1", "1.2"], [b"SC", b"SR"], now=100.0)
    assert outbox.add("dicomweb", ["2.1"], [b"X"], now=101.0)
    assert outbox.add("dimse", ["3.1"], [b"Y"], now=102.0)
    outbox.close()

    reopened = SqliteOutbox(path, max_sets=10)
    assert reopened.stats("dicomweb") == (2, 100.0) and reopened.stats("dimse") == (1, 102.0)
    first = reopened.next_due("dicomweb", now=200.0)
    assert first is not None and first.sop_instance_uids == ["1.1", "1.2"] and first.instances == [b"SC", b"SR"]
    assert (first.created, first.attempts, first.channel) == (100.0, 0, "dicomweb")
    assert reopened.next_due("dicomweb", now=50.0) is None  # not due before it was added
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_pending_set_is_not_added_twice_and_a_full_outbox_refuses(tmp_path):
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", max_sets=2)
    assert outbox.add("dicomweb", ["1.1"], [b"a"], now=1.0)
    assert outbox.add("dicomweb", ["1.1"], [b"a"], now=2.0)  # the same image sent again while pending
    assert outbox.stats("dicomweb") == (1, 1.0)
    assert outbox.add("dicomweb", ["2.1"], [b"b"], now=3.0)
    assert not outbox.add("dicomweb", ["3.1"], [b"c"], now=4.0)
    assert outbox.stats("dicomweb") == (2, 1.0)


def test_reschedule_orders_by_next_attempt_and_remove_deletes_the_instances(tmp_path):
    path = tmp_path / "o.sqlite3"
    outbox = SqliteOutbox(path, max_sets=10)
    outbox.add("dicomweb", ["1.1"], [b"a"], now=1.0)
    outbox.add("dicomweb", ["2.1"], [b"b"], now=2.0)
    first = outbox.next_due("dicomweb", now=10.0)
    assert first is not None
    outbox.reschedule(first.id, attempts=1, next_attempt=20.0, error="ConnectError")
    second = outbox.next_due("dicomweb", now=10.0)
    assert second is not None and second.sop_instance_uids == ["2.1"]
    assert outbox.next_attempt_time("dicomweb") == 2.0
    outbox.remove(second.id)
    assert outbox.next_due("dicomweb", now=10.0) is None and outbox.next_attempt_time("dicomweb") == 20.0
    again = outbox.next_due("dicomweb", now=20.0)
    assert again is not None and again.attempts == 1
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM outbox_instance").fetchone()[0] == 1


# ---------------------------------------------------------------------------------------------------------
# The sender
# ---------------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.offset = start

    def __call__(self) -> float:
        import time

        return self.offset + time.monotonic()


class ScriptedArchive:
    """deliver(): answers from a script per SOP Instance UID of the set's first instance (default STORED)."""

    def __init__(self, script: dict[str, list[Delivery]] | None = None, down: bool = False) -> None:
        self.script = script or {}
        self.down = down
        self.calls: list[tuple[str, int]] = []
        self.stored: list[str] = []

    async def deliver(self, item: OutboxItem) -> tuple[Delivery, str]:
        uid = item.sop_instance_uids[0]
        self.calls.append((uid, item.attempts))
        if self.down:
            return Delivery.RETRY, "ConnectError"
        steps = self.script.get(uid)
        outcome = steps.pop(0) if steps else Delivery.STORED
        if outcome is Delivery.STORED:
            self.stored.append(uid)
        return outcome, outcome.value


def _sender(outbox, archive, metrics, clock, **kw) -> OutboxSender:
    options = {"backoff_s": 0.02, "backoff_max_s": 0.08, "max_age_s": 3600.0}
    options.update(kw)
    return OutboxSender(outbox, "dicomweb", archive.deliver, metrics, clock=clock, **options)


async def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _value(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_backoff_doubles_from_the_base_up_to_the_cap(tmp_path):
    sender = _sender(
        SqliteOutbox(tmp_path / "o.sqlite3", 10),
        ScriptedArchive(),
        ServiceMetrics(),
        Clock(),
        backoff_s=0.5,
        backoff_max_s=60,
    )
    assert [sender.backoff(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]


def test_failures_are_retried_with_backoff_until_stored_and_counted(tmp_path):
    metrics, clock = ServiceMetrics(), Clock()
    archive = ScriptedArchive({"1.1": [Delivery.RETRY, Delivery.RETRY, Delivery.STORED]})
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 10)

    async def scenario():
        sender = _sender(outbox, archive, metrics, clock)
        await sender.start()
        assert await sender.submit(["1.1", "1.2"], [b"SC", b"SR"])
        await _until(lambda: archive.stored == ["1.1"])
        await sender.stop()

    asyncio.run(scenario())
    assert archive.calls == [("1.1", 0), ("1.1", 1), ("1.1", 2)]
    assert _value(metrics, "normgate_dicomweb_push_retries_total", channel="dicomweb") == 2
    assert _value(metrics, "normgate_dicomweb_push_total", channel="dicomweb", outcome="pushed") == 1
    assert _value(metrics, "normgate_dicomweb_push_queue_depth", channel="dicomweb") == 0
    assert outbox.stats("dicomweb") == (0, None)


def test_final_refusals_and_partial_stores_leave_the_outbox_and_are_counted(tmp_path):
    metrics, clock = ServiceMetrics(), Clock()
    archive = ScriptedArchive({"1.1": [Delivery.REFUSED], "2.1": [Delivery.PARTIAL]})
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 10)

    async def scenario():
        sender = _sender(outbox, archive, metrics, clock)
        await sender.start()
        await sender.submit(["1.1"], [b"a"])
        await sender.submit(["2.1"], [b"b"])
        await _until(lambda: outbox.stats("dicomweb")[0] == 0)
        await sender.stop()

    asyncio.run(scenario())
    assert archive.calls == [("1.1", 0), ("2.1", 0)]
    assert _value(metrics, "normgate_dicomweb_push_total", channel="dicomweb", outcome="failed") == 1
    assert _value(metrics, "normgate_dicomweb_push_total", channel="dicomweb", outcome="partial") == 1
    assert _value(metrics, "normgate_dicomweb_push_retries_total", channel="dicomweb") == 0


def test_a_set_that_always_fails_does_not_hold_up_the_others(tmp_path):
    metrics, clock = ServiceMetrics(), Clock()
    archive = ScriptedArchive({"1.1": [Delivery.RETRY] * 50})
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 10)

    async def scenario():
        sender = _sender(outbox, archive, metrics, clock, backoff_max_s=0.5)
        await sender.start()
        for uid in ("1.1", "2.1", "3.1"):
            await sender.submit([uid], [b"x"])
        await _until(lambda: archive.stored == ["2.1", "3.1"])
        await sender.stop()

    asyncio.run(scenario())
    assert outbox.stats("dicomweb")[0] == 1  # only the failing one waits


def test_backlog_gauges_and_expiry_after_the_max_age(tmp_path):
    metrics, clock = ServiceMetrics(), Clock()
    archive = ScriptedArchive(down=True)
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 10)

    async def scenario():
        sender = _sender(outbox, archive, metrics, clock, max_age_s=30.0, backoff_max_s=0.05)
        await sender.start()
        await sender.submit(["1.1"], [b"x"])
        await _until(lambda: len(archive.calls) >= 2)
        depth = _value(metrics, "normgate_dicomweb_push_queue_depth", channel="dicomweb")
        clock.offset += 20  # twenty seconds later, still down
        age = _value(metrics, "normgate_dicomweb_push_oldest_age_seconds", channel="dicomweb")
        clock.offset += 20  # now older than the max age
        await _until(lambda: outbox.stats("dicomweb")[0] == 0)
        await sender.stop()
        return depth, age

    depth, age = asyncio.run(scenario())
    assert depth == 1 and 20 <= age < 25
    assert _value(metrics, "normgate_dicomweb_push_total", channel="dicomweb", outcome="expired") == 1
    assert _value(metrics, "normgate_dicomweb_push_oldest_age_seconds", channel="dicomweb") == 0


def test_a_down_archive_is_not_hit_once_per_pending_set(tmp_path):
    """With the archive down, attempts follow the sender's backoff, not the number of pending sets."""
    metrics, clock = ServiceMetrics(), Clock()
    archive = ScriptedArchive(down=True)
    outbox = SqliteOutbox(tmp_path / "o.sqlite3", 100)

    async def scenario():
        sender = _sender(outbox, archive, metrics, clock, backoff_s=0.1, backoff_max_s=0.2)
        for n in range(50):
            outbox.add("dicomweb", [f"9.{n}"], [b"x"], now=clock())
        await sender.start()
        await asyncio.sleep(1.0)
        await sender.stop()

    asyncio.run(scenario())
    # pauses of 0.1, 0.2, 0.2, …: about 6 attempts in one second, whatever the 50 pending sets
    assert 3 <= len(archive.calls) <= 8, archive.calls


def test_sets_left_by_a_stopped_sender_are_delivered_by_the_next_one(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite3"
    metrics, clock = ServiceMetrics(), Clock()
    down = ScriptedArchive(down=True)

    async def first_run():
        sender = _sender(SqliteOutbox(path, 10), down, metrics, clock)
        await sender.start()
        for uid in ("1.1", "2.1", "3.1"):
            await sender.submit([uid], [b"x"])
        await _until(lambda: len(down.calls) >= 2)
        await sender.stop()
        sender.outbox.close()

    asyncio.run(first_run())
    up = ScriptedArchive()
    fresh_metrics = ServiceMetrics()

    async def second_run():
        sender = _sender(SqliteOutbox(path, 10), up, fresh_metrics, clock)
        await sender.start()
        assert _value(fresh_metrics, "normgate_dicomweb_push_queue_depth", channel="dicomweb") == 3
        await _until(lambda: len(up.stored) == 3)
        await sender.stop()

    asyncio.run(second_run())
    assert sorted(up.stored) == ["1.1", "2.1", "3.1"]


# ---------------------------------------------------------------------------------------------------------
# One STOW-RS attempt
# ---------------------------------------------------------------------------------------------------------


def _attempt(step, **kw) -> tuple[tuple[Delivery, str], list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if isinstance(step, Exception):
            raise step
        body = {REFERENCED: {"vr": "SQ", "Value": []}}
        if step in (202, "200-with-failures"):
            body[FAILED] = {"vr": "SQ", "Value": [{REASON: {"vr": "US", "Value": [0xA700]}}]}
        return httpx.Response(200 if step == "200-with-failures" else step, json=body)

    push = DicomwebPush("http://pacs.invalid/dicom-web/", transport=httpx.MockTransport(handler), **kw)
    item = OutboxItem(1, "dicomweb", 0.0, 0, 0.0, ["1.2.3", "1.2.4"], [b"SC-BYTES", b"SR-BYTES"])

    async def scenario():
        await push.start()
        try:
            return await push.deliver(item)
        finally:
            await push.aclose()

    return asyncio.run(scenario()), requests


@pytest.mark.parametrize(
    "step, expected",
    [
        (200, Delivery.STORED),
        ("200-with-failures", Delivery.PARTIAL),
        (202, Delivery.PARTIAL),
        (400, Delivery.REFUSED),
        (401, Delivery.REFUSED),
        (409, Delivery.REFUSED),
        (429, Delivery.RETRY),
        (503, Delivery.RETRY),
        (httpx.ConnectError("refused"), Delivery.RETRY),
        (httpx.ReadTimeout("slow"), Delivery.RETRY),
    ],
    ids=str,
)
def test_stow_attempt_outcomes(step, expected):
    (outcome, reason), _ = _attempt(step)
    assert outcome is expected, reason


def test_stow_attempt_request():
    _, [request] = _attempt(200, authorization="Bearer s3cret")
    assert str(request.url) == "http://pacs.invalid/dicom-web/studies"
    assert request.headers["accept"] == "application/dicom+json"
    assert request.headers["authorization"] == "Bearer s3cret"
    parts = parse_multipart_related(request.content, stow_boundary(request.headers["content-type"]), max_parts=4)
    assert [p.body for p in parts] == [b"SC-BYTES", b"SR-BYTES"]
