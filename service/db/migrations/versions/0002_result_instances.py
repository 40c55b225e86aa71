"""Result instances (Secondary Capture, SR) kept in the store, so any replica answers WADO-RS for them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db.schema import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_instances",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("part10", sa.LargeBinary, nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_result_instances_time", "result_instances", ["time"])


def downgrade() -> None:
    op.drop_table("result_instances")
