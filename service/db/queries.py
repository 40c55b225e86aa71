"""Reads and writes of the store: audit records in and out (filters, keyset pagination), verdicts, retention,
result instances. Plain functions on an ``Engine``; they block, so the event loop calls them in a thread.

Pagination is by keyset, newest first: a page ends with a cursor that encodes the (time, id) of its last row, and
the next page starts strictly after it. Unlike an offset it never skips or repeats a record when new ones arrive
between two pages.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Select, and_, delete, func, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from service.db.schema import audit_records, result_instances, verdicts
from service.serving.decisions import DecisionRecord

# The columns an audit record has, in the order of the CSV export (after these: the current verdict).
RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(DecisionRecord))
VERDICTS = ("agree", "reacquired_anyway", "accepted_anyway", "wrong_location")


class BadCursor(ValueError):
    """A pagination cursor this store did not hand out."""


@dataclass(frozen=True)
class AuditFilter:
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    decision: str | None = None
    model: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    key_id: str | None = None


def _insert_ignoring_duplicates(engine: Engine, table: Any, key: str) -> Any:
    """INSERT … ON CONFLICT (key) DO NOTHING for this dialect: writing a row twice keeps the first."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])


def record_row(record: DecisionRecord) -> dict[str, Any]:
    return asdict(record)


def insert_records(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write audit rows in one transaction; rows already present (same assessment_id) are left as they are."""
    if not rows:
        return
    with engine.begin() as connection:
        connection.execute(_insert_ignoring_duplicates(engine, audit_records, "assessment_id"), list(rows))


def _filtered(statement: Select[Any], where: AuditFilter) -> Select[Any]:
    r = audit_records.c
    conditions = []
    if where.since is not None:
        conditions.append(r.time >= where.since)
    if where.until is not None:
        conditions.append(r.time < where.until)
    for column, value in (
        (r.decision, where.decision),
        (r.model_name, where.model),
        (r.study_instance_uid, where.study_instance_uid),
        (r.series_instance_uid, where.series_instance_uid),
        (r.sop_instance_uid, where.sop_instance_uid),
        (r.key_id, where.key_id),
    ):
        if value is not None:
            conditions.append(column == value)
    return statement.where(*conditions) if conditions else statement


def encode_cursor(time: datetime, row_id: int) -> str:
    raw = json.dumps([time.astimezone(UTC).isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        time_text, row_id = json.loads(raw)
        time = datetime.fromisoformat(time_text)
        if time.tzinfo is None or not isinstance(row_id, int):
            raise ValueError
        return time, row_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor("cursor is not one this server handed out (use next_cursor of the previous page)") from None


def _current_verdicts(engine: Engine, assessment_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    ids = list(assessment_ids)
    if not ids:
        return {}
    v = verdicts.c
    newest = select(func.max(v.id)).where(v.assessment_id.in_(ids)).group_by(v.assessment_id).scalar_subquery()
    statement = select(v.assessment_id, v.verdict, v.note, v.time, v.key_id).where(v.id.in_(newest))
    with engine.connect() as connection:
        return {row.assessment_id: _verdict_dict(row._mapping) for row in connection.execute(statement)}


def _verdict_dict(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {"verdict": row["verdict"], "note": row["note"], "time": row["time"], "key_id": row["key_id"]}


def _record_dict(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {name: row[name] for name in RECORD_COLUMNS}


def query_records(
    engine: Engine, where: AuditFilter, limit: int, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of records, newest first, each with its current ``verdict`` (or None); and the next cursor."""
    r = audit_records.c
    statement = _filtered(select(audit_records), where)
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        statement = statement.where(or_(r.time < after_time, and_(r.time == after_time, r.id < after_id)))
    statement = statement.order_by(r.time.desc(), r.id.desc()).limit(limit + 1)
    with engine.connect() as connection:
        rows = [row._mapping for row in connection.execute(statement)]
    more = len(rows) > limit
    rows = rows[:limit]
    current = _current_verdicts(engine, (row["assessment_id"] for row in rows))
    records = [{**_record_dict(row), "verdict": current.get(row["assessment_id"])} for row in rows]
    next_cursor = encode_cursor(rows[-1]["time"], rows[-1]["id"]) if more else None
    return records, next_cursor


def iter_records(engine: Engine, where: AuditFilter, page_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Every matching record, newest first, page by page (the CSV export)."""
    cursor: str | None = None
    while True:
        page, cursor = query_records(engine, where, page_size, cursor)
        yield from page
        if cursor is None:
            return


def get_record(engine: Engine, assessment_id: str) -> dict[str, Any] | None:
    """The record with its current verdict and every verdict given, oldest first; None when there is none."""
    with engine.connect() as connection:
        row = connection.execute(select(audit_records).where(audit_records.c.assessment_id == assessment_id)).first()
        if row is None:
            return None
        history = [
            _verdict_dict(v._mapping)
            for v in connection.execute(
                select(verdicts).where(verdicts.c.assessment_id == assessment_id).order_by(verdicts.c.id)
            )
        ]
    return {**_record_dict(row._mapping), "verdict": history[-1] if history else None, "verdicts": history}


def add_verdict(
    engine: Engine,
    assessment_id: str,
    verdict: str,
    note: str | None,
    time: datetime,
    key_id: str | None,
    client: str | None,
) -> tuple[dict[str, Any], dict[str, Any] | None, str] | None:
    """Store a verdict; returns (it, the verdict it supersedes or None, the record's model name), or None when the
    assessment is not in the store. Earlier verdicts stay: the history is kept, the newest counts."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}")
    with engine.begin() as connection:
        model = connection.execute(
            select(audit_records.c.model_name).where(audit_records.c.assessment_id == assessment_id)
        ).scalar_one_or_none()
        if model is None:
            return None
        previous = connection.execute(
            select(verdicts).where(verdicts.c.assessment_id == assessment_id).order_by(verdicts.c.id.desc()).limit(1)
        ).first()
        row = {
            "assessment_id": assessment_id,
            "verdict": verdict,
            "note": note,
            "time": time,
            "key_id": key_id,
            "client": client,
        }
        connection.execute(insert(verdicts), row)
    return _verdict_dict(row), (_verdict_dict(previous._mapping) if previous else None), model


def purge_records(engine: Engine, before: datetime) -> int:
    """Delete audit records older than ``before`` with their verdicts; returns how many records went."""
    with engine.begin() as connection:
        old = select(audit_records.c.assessment_id).where(audit_records.c.time < before)
        connection.execute(delete(verdicts).where(verdicts.c.assessment_id.in_(old)))
        result = connection.execute(delete(audit_records).where(audit_records.c.time < before))
    return int(result.rowcount or 0)


def count_records(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(audit_records)).scalar_one())


# -- result instances ---------------------------------------------------------------------------------------------


def save_result(engine: Engine, study_uid: str, series_uid: str, sop_uid: str, part10: bytes, time: datetime) -> None:
    """Keep a result instance (a second save of the same SOP Instance UID keeps the first)."""
    with engine.begin() as connection:
        connection.execute(
            _insert_ignoring_duplicates(engine, result_instances, "sop_instance_uid"),
            {
                "sop_instance_uid": sop_uid,
                "study_instance_uid": study_uid,
                "series_instance_uid": series_uid,
                "part10": part10,
                "time": time,
            },
        )


def load_result(engine: Engine, study_uid: str, series_uid: str, sop_uid: str) -> bytes | None:
    c = result_instances.c
    with engine.connect() as connection:
        value = connection.execute(
            select(c.part10).where(
                c.sop_instance_uid == sop_uid, c.study_instance_uid == study_uid, c.series_instance_uid == series_uid
            )
        ).scalar_one_or_none()
    return bytes(value) if value is not None else None


def purge_results(engine: Engine, before: datetime) -> int:
    with engine.begin() as connection:
        result = connection.execute(delete(result_instances).where(result_instances.c.time < before))
    return int(result.rowcount or 0)
