"""The audit trail: one row per decision, and the radiographers' verdicts on them.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db.schema import BigId, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("assessment_id", sa.String(128), nullable=False, unique=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("weights_sha256", sa.String(64)),
        sa.Column("method", sa.String(64)),
        sa.Column("probability", sa.Float),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("calibration", sa.String(128)),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("point_x", sa.Integer),
        sa.Column("point_y", sa.Integer),
        sa.Column("ood_score", sa.Float),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("client", sa.String(64)),
    )
    op.create_index("ix_audit_records_time_id", "audit_records", ["time", "id"])
    op.create_index("ix_audit_records_model_time", "audit_records", ["model_name", "time"])
    op.create_index("ix_audit_records_study", "audit_records", ["study_instance_uid"])
    op.create_index("ix_audit_records_series", "audit_records", ["series_instance_uid"])
    op.create_index("ix_audit_records_sop", "audit_records", ["sop_instance_uid"])
    op.create_index("ix_audit_records_key_time", "audit_records", ["key_id", "time"])
    op.create_table(
        "verdicts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "assessment_id",
            sa.String(128),
            sa.ForeignKey("audit_records.assessment_id", ondelete="CASCADE", name="fk_verdicts_assessment"),
            nullable=False,
        ),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("client", sa.String(64)),
    )
    op.create_index("ix_verdicts_assessment_id", "verdicts", ["assessment_id", "id"])


def downgrade() -> None:
    op.drop_table("verdicts")
    op.drop_table("audit_records")
