"""Reads of the audit trail: every filter, keyset pages that neither skip nor repeat (also with equal times and
records arriving between pages), verdict history, retention, result instances; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.db import queries
from service.db.audit import purge_expired, row_of
from service.db.queries import AuditFilter, BadCursor
from service.db.store import Store
from tests.service.db.test_audit_trail import T0, decision


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    s.ensure_schema()
    yield s
    s.dispose()


def fill(store: Store, n: int, **changes) -> list:
    records = [decision(i, **changes) for i in range(n)]
    queries.insert_records(store.engine, [row_of(r) for r in records])
    return records


def all_pages(store: Store, where: AuditFilter, limit: int) -> list[str]:
    ids, cursor = [], None
    while True:
        page, cursor = queries.query_records(store.engine, where, limit, cursor)
        ids += [r["assessment_id"] for r in page]
        if cursor is None:
            return ids


def test_filters_select_what_an_independent_scan_selects(store):
    records = fill(store, 60)
    extra = [
        decision(100, model_name="wide", key_id=None, study_instance_uid="9.9", series_instance_uid="9.9.1"),
        decision(101, model_name="wide", decision="unassessable", reason="blank", probability=None),
    ]
    queries.insert_records(store.engine, [row_of(r) for r in extra])
    records += extra
    cases = [
        (AuditFilter(), lambda r: True),
        (AuditFilter(decision="reacquire"), lambda r: r.decision == "reacquire"),
        (AuditFilter(model="wide"), lambda r: r.model_name == "wide"),
        (AuditFilter(study_instance_uid="9.9"), lambda r: r.study_instance_uid == "9.9"),
        (AuditFilter(series_instance_uid="1.2.3.4"), lambda r: r.series_instance_uid == "1.2.3.4"),
        (AuditFilter(sop_instance_uid="1.2.3.4.7"), lambda r: r.sop_instance_uid == "1.2.3.4.7"),
        (AuditFilter(key_id="pacs"), lambda r: r.key_id == "pacs"),
        (
            AuditFilter(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=20)),
            lambda r: T0 + timedelta(seconds=10) <= r.time < T0 + timedelta(seconds=20),
        ),
        (
            AuditFilter(decision="accept", since=T0 + timedelta(seconds=30), model="default"),
            lambda r: r.decision == "accept" and r.time >= T0 + timedelta(seconds=30) and r.model_name == "default",
        ),
    ]
    for where, keep in cases:
        expected = [r.assessment_id for r in sorted(records, key=lambda r: r.time, reverse=True) if keep(r)]
        assert all_pages(store, where, 7) == expected, where


def test_pages_neither_skip_nor_repeat_with_equal_times_and_new_arrivals(store):
    same_time = [decision(i, time=T0) for i in range(25)]  # every record at one instant: the id breaks ties
    queries.insert_records(store.engine, [row_of(r) for r in same_time])
    first, cursor = queries.query_records(store.engine, AuditFilter(), 10)
    # Newer records arrive between two pages; the pages already begun must not show them or shift.
    queries.insert_records(store.engine, [row_of(decision(i, time=T0 + timedelta(hours=1))) for i in range(25, 30)])
    seen = [r["assessment_id"] for r in first]
    while cursor is not None:
        page, cursor = queries.query_records(store.engine, AuditFilter(), 10, cursor)
        seen += [r["assessment_id"] for r in page]
    assert seen == [f"a{i:05d}" for i in reversed(range(25))]
    with pytest.raises(BadCursor):
        queries.query_records(store.engine, AuditFilter(), 10, "not-a-cursor")


def test_verdict_history_is_kept_and_the_newest_counts(store):
    fill(store, 3)
    t = T0 + timedelta(minutes=5)
    first, superseded, model = queries.add_verdict(store.engine, "a00001", "agree", None, t, "pacs", "10.0.0.1")
    assert superseded is None and model == "default" and first["verdict"] == "agree"
    second, superseded, _ = queries.add_verdict(
        store.engine, "a00001", "wrong_location", "object lower left", t + timedelta(minutes=1), "qa", None
    )
    assert superseded == first
    record = queries.get_record(store.engine, "a00001")
    assert [v["verdict"] for v in record["verdicts"]] == ["agree", "wrong_location"]
    assert record["verdict"] == second and record["verdict"]["note"] == "object lower left"
    page, _ = queries.query_records(store.engine, AuditFilter(), 10)
    assert {r["assessment_id"]: (r["verdict"] or {}).get("verdict") for r in page} == {
        "a00002": None,
        "a00001": "wrong_location",
        "a00000": None,
    }
    assert queries.add_verdict(store.engine, "nope", "agree", None, t, None, None) is None
    with pytest.raises(ValueError):
        queries.add_verdict(store.engine, "a00001", "maybe", None, t, None, None)


def test_retention_deletes_old_records_with_their_verdicts_and_old_results(store):
    fill(store, 10)  # T0 … T0+9 s
    queries.add_verdict(store.engine, "a00002", "agree", None, T0, None, None)
    queries.add_verdict(store.engine, "a00008", "agree", None, T0, None, None)
    now = T0 + timedelta(days=30, seconds=5)  # retention 30 days: records before T0+5 s go
    queries.save_result(store.engine, "1.2", "1.2.3", "1.2.3.1", b"old", now - timedelta(hours=25))
    queries.save_result(store.engine, "1.2", "1.2.3", "1.2.3.2", b"new", now - timedelta(hours=23))
    assert purge_expired(store, 30, 24, now) == (5, 1)
    assert queries.count_records(store.engine) == 5
    assert queries.get_record(store.engine, "a00002") is None
    assert [v["verdict"] for v in queries.get_record(store.engine, "a00008")["verdicts"]] == ["agree"]
    assert queries.load_result(store.engine, "1.2", "1.2.3", "1.2.3.1") is None
    assert queries.load_result(store.engine, "1.2", "1.2.3", "1.2.3.2") == b"new"
    assert queries.load_result(store.engine, "1.2", "9.9", "1.2.3.2") is None  # wrong series: not that one
    assert purge_expired(store, 0, 0, now + timedelta(days=999)) == (0, 0)  # 0 keeps everything
    assert queries.count_records(store.engine) == 5
