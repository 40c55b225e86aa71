"""The store's tables (SQLAlchemy Core). The migrations under ``migrations/versions`` create exactly these;
``tests/service/db/test_migrations.py`` compares the migrated database with this metadata.

* ``audit_records``: one row per decision (``service.serving.decisions.DecisionRecord``); identifiers only, never
  names or other patient data. ``assessment_id`` is unique, so writing a record twice (a replayed spool, a commit
  whose acknowledgement was lost) keeps one.
* ``verdicts``: the radiographers' verdicts on a decision; every verdict is kept, the newest one counts.
* ``result_instances``: the result DICOM (Secondary Capture, SR) WADO-RS serves, so any replica answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

# Alembic's own table, named so it cannot clash with another application's in a shared PostgreSQL database.
VERSION_TABLE = "normgate_alembic_version"
UID = 64  # a DICOM UI value is at most 64 characters


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: ``timestamptz`` on PostgreSQL, a naive UTC value on SQLite (which has no zones), so
    comparisons and ordering are the same on both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("store times must be timezone-aware (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

audit_records = Table(
    "audit_records",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("assessment_id", String(128), nullable=False, unique=True),
    Column("request_id", String(64), nullable=False),
    Column("source", String(16), nullable=False),
    Column("time", UtcDateTime(), nullable=False),
    Column("study_instance_uid", String(UID)),
    Column("series_instance_uid", String(UID)),
    Column("sop_instance_uid", String(UID)),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("weights_sha256", String(64)),
    Column("method", String(64)),
    Column("probability", Float),
    Column("threshold", Float, nullable=False),
    Column("calibration", String(128)),
    Column("decision", String(16), nullable=False),
    Column("reason", String(32)),
    Column("point_x", Integer),
    Column("point_y", Integer),
    Column("ood_score", Float),
    Column("latency_ms", Float, nullable=False),
    Column("key_id", String(64)),
    Column("client", String(64)),
    Index("ix_audit_records_time_id", "time", "id"),
    Index("ix_audit_records_model_time", "model_name", "time"),
    Index("ix_audit_records_study", "study_instance_uid"),
    Index("ix_audit_records_series", "series_instance_uid"),
    Index("ix_audit_records_sop", "sop_instance_uid"),
    Index("ix_audit_records_key_time", "key_id", "time"),
)

verdicts = Table(
    "verdicts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "assessment_id",
        String(128),
        ForeignKey("audit_records.assessment_id", ondelete="CASCADE", name="fk_verdicts_assessment"),
        nullable=False,
    ),
    Column("verdict", String(32), nullable=False),
    Column("note", Text),
    Column("time", UtcDateTime(), nullable=False),
    Column("key_id", String(64)),
    Column("client", String(64)),
    Index("ix_verdicts_assessment_id", "assessment_id", "id"),
)

result_instances = Table(
    "result_instances",
    metadata,
    Column("sop_instance_uid", String(UID), primary_key=True),
    Column("study_instance_uid", String(UID), nullable=False),
    Column("series_instance_uid", String(UID), nullable=False),
    Column("part10", LargeBinary, nullable=False),
    Column("time", UtcDateTime(), nullable=False),
    Index("ix_result_instances_time", "time"),
)
