"""The audit writer: batches into the store, spools while the database is down and replays in order, survives a
restart with a backlog, sets aside rows the database refuses, never blocks or loses a record when its buffer is
full. Each test runs on SQLite and on a real PostgreSQL; outages are injected at the insert (the real outage, a
stopped PostgreSQL server under /assess load, is tests/service/api/test_audit_api.py)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from service.db import audit as audit_module
from service.db import queries
from service.db.audit import AuditTrail, Spool
from service.db.schema import audit_records
from service.db.store import Store
from service.serving.decisions import DecisionRecord

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def decision(i: int, **changes) -> DecisionRecord:
    record = DecisionRecord(
        time=T0 + timedelta(seconds=i),
        assessment_id=f"a{i:05d}",
        request_id=f"r{i:05d}",
        source="assess",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid=f"1.2.3.4.{i}",
        model_name="default",
        model_version="1.0.0",
        weights_sha256="ab" * 32,
        method="normgrad-conv1x1-combined",
        probability=(i % 100) / 100,
        threshold=0.5,
        calibration=None,
        decision="reacquire" if (i % 100) >= 50 else "accept",
        reason=None,
        point_x=i,
        point_y=2 * i,
        ood_score=None,
        latency_ms=12.5,
        key_id="pacs",
        client="127.0.0.1",
    )
    return replace(record, **changes)


def stored_ids(store: Store) -> list[str]:
    with store.engine.connect() as connection:
        return list(connection.scalars(select(audit_records.c.assessment_id).order_by(audit_records.c.id)))


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    s.ensure_schema()
    yield s
    s.dispose()


def outage(monkeypatch):
    """Make every insert fail as a database that is down does; returns a function that ends the outage."""
    real = queries.insert_records

    def refused(engine, rows):
        raise sa_exc.OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(audit_module.queries, "insert_records", refused)
    return lambda: monkeypatch.setattr(audit_module.queries, "insert_records", real)


def test_records_reach_the_store_with_every_field(store, tmp_path):
    trail = AuditTrail(store, tmp_path / "spool.jsonl", buffer_size=1000)
    trail.start()
    for i in range(120):
        trail.record(decision(i))
    assert trail.flush(10)
    trail.stop()
    assert stored_ids(store) == [f"a{i:05d}" for i in range(120)]
    row = queries.get_record(store.engine, "a00042")
    expected = decision(42)
    for name in queries.RECORD_COLUMNS:
        assert row[name] == getattr(expected, name), name
    assert row["verdict"] is None and row["verdicts"] == []
    assert trail.spool.depth == 0


def test_outage_spools_in_order_and_replays_exactly_once(store, tmp_path, monkeypatch):
    end_outage = outage(monkeypatch)
    trail = AuditTrail(store, tmp_path / "spool.jsonl", buffer_size=1000, retry_max_s=0.2)
    trail.start()
    for i in range(50):
        trail.record(decision(i))
    assert trail.flush(10)
    assert trail.spool.depth == 50 and stored_ids(store) == []
    lines = (tmp_path / "spool.jsonl").read_text().splitlines()
    assert [json.loads(line)["assessment_id"] for line in lines] == [f"a{i:05d}" for i in range(50)]

    end_outage()
    for i in range(50, 80):  # arrive while the backlog replays: they must land behind it
        trail.record(decision(i))
    deadline = time.monotonic() + 20
    while (trail.spool.depth or len(stored_ids(store)) < 80) and time.monotonic() < deadline:
        time.sleep(0.05)
    trail.stop()
    assert stored_ids(store) == [f"a{i:05d}" for i in range(80)]
    assert (tmp_path / "spool.jsonl").stat().st_size == 0
    assert not (tmp_path / "spool.jsonl.offset").exists()


def test_a_backlog_left_by_a_previous_process_is_replayed_at_start(store, tmp_path, monkeypatch):
    spool_path = tmp_path / "spool.jsonl"
    end_outage = outage(monkeypatch)
    first = AuditTrail(store, spool_path, buffer_size=1000, retry_max_s=0.2)
    first.start()
    for i in range(30):
        first.record(decision(i))
    first.stop()  # the process ends while the database is down
    assert first.spool.depth == 30
    # A crash half-way through an append leaves a partial line: it is cut, the rest replays.
    with open(spool_path, "ab") as handle:
        handle.write(b'{"assessment_id": "cut')
    end_outage()
    second = AuditTrail(store, spool_path, buffer_size=1000, retry_max_s=0.2)
    assert second.spool.depth == 30
    second.start()
    second.record(decision(30))
    deadline = time.monotonic() + 20
    while len(stored_ids(store)) < 31 and time.monotonic() < deadline:
        time.sleep(0.05)
    second.stop()
    assert stored_ids(store) == [f"a{i:05d}" for i in range(31)]


def test_a_replay_cut_short_resumes_after_what_was_written(store, tmp_path):
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([audit_module.row_of(decision(i)) for i in range(10)])
    lines, end = spool.read(4)
    queries.insert_records(store.engine, [audit_module._from_json(line) for line in lines])
    spool.commit(end, len(lines))
    # ... the process dies here; the next one starts from the stored offset and rewrites nothing twice.
    again = Spool(tmp_path / "spool.jsonl")
    assert again.offset == end and again.depth == 6
    rest, end2 = again.read(100)
    queries.insert_records(store.engine, [audit_module._from_json(line) for line in [*lines, *rest]])
    again.commit(end2, len(rest))
    assert stored_ids(store) == [f"a{i:05d}" for i in range(10)]
    assert again.depth == 0 and (tmp_path / "spool.jsonl").stat().st_size == 0


def test_rows_the_database_refuses_are_set_aside_and_the_rest_written(store, tmp_path):
    trail = AuditTrail(store, tmp_path / "spool.jsonl", buffer_size=1000)
    # A spooled row that violates the schema (no decision) must not block the rows behind it forever.
    bad = audit_module.row_of(decision(1))
    bad["decision"] = None
    trail.spool.append([audit_module.row_of(decision(0)), bad, audit_module.row_of(decision(2))])
    trail.start()
    deadline = time.monotonic() + 20
    while trail.spool.depth and time.monotonic() < deadline:
        time.sleep(0.05)
    trail.stop()
    assert stored_ids(store) == ["a00000", "a00002"]
    rejected = (tmp_path / "spool.jsonl.rejected").read_text().splitlines()
    assert [json.loads(line)["assessment_id"] for line in rejected] == ["a00001"]


def test_a_full_buffer_spools_instead_of_blocking(store, tmp_path, monkeypatch):
    trail = AuditTrail(store, tmp_path / "spool.jsonl", buffer_size=5)  # writer not started: nothing drains
    started = time.perf_counter()
    for i in range(12):
        trail.record(decision(i))
    assert time.perf_counter() - started < 1.0
    assert trail.buffered == 5 and trail.spool.depth == 7
    trail.start()
    deadline = time.monotonic() + 20
    while len(stored_ids(store)) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    trail.stop()
    assert sorted(stored_ids(store)) == [f"a{i:05d}" for i in range(12)]


def test_long_values_are_cut_to_the_column_not_refused(store, tmp_path):
    trail = AuditTrail(store, tmp_path / "spool.jsonl", buffer_size=10)
    trail.start()
    trail.record(decision(0, client="x" * 300, model_version="v" * 300))
    assert trail.flush(10)
    trail.stop()
    row = queries.get_record(store.engine, "a00000")
    assert row["client"] == "x" * 64 and row["model_version"] == "v" * 128
