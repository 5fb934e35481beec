"""Audit log (append-only events) and an index for "the current mark of each reviewer on a study".

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from spine_ui.services.store.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("study_key", sa.String(64), nullable=True),
        sa.Column("bundle_version", sa.String(100), nullable=True),
        sa.Column("outcome", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_time", "audit_events", ["time"])
    op.create_index("ix_review_marks_study_key_reviewer", "review_marks", ["study_key", "reviewer"])


def downgrade() -> None:
    op.drop_index("ix_review_marks_study_key_reviewer", table_name="review_marks")
    op.drop_table("audit_events")
