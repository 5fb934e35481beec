"""Initial schema: findings, worklists and their entries, review marks.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

from spine_ui.services.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "findings",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("bundle_name", sa.String(200), nullable=False),
        sa.Column("bundle_version", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_findings"),
    )
    op.create_index("ix_findings_updated_at", "findings", ["updated_at"])
    op.create_table(
        "worklists",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_worklists"),
    )
    op.create_index("ix_worklists_owner", "worklists", ["owner"])
    op.create_table(
        "worklist_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("worklist_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("study_key", sa.String(64), nullable=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["worklist_id"], ["worklists.id"], ondelete="CASCADE",
                                name="fk_worklist_entries_worklist_id_worklists"),
        sa.PrimaryKeyConstraint("id", name="pk_worklist_entries"),
        sa.UniqueConstraint("worklist_id", "position", name="uq_worklist_entries_worklist_id_position"),
    )
    op.create_index("ix_worklist_entries_study_key", "worklist_entries", ["study_key"])
    op.create_table(
        "review_marks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_key", sa.String(64), nullable=False),
        sa.Column("worklist_id", sa.String(32), nullable=True),
        sa.Column("review", sa.String(20), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("bundle_version", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_review_marks"),
    )
    op.create_index("ix_review_marks_created_at", "review_marks", ["created_at"])


def downgrade() -> None:
    op.drop_table("review_marks")
    op.drop_table("worklist_entries")
    op.drop_table("worklists")
    op.drop_table("findings")
