"""The store's tables (SQLAlchemy 2.x ORM). The Alembic revisions in ``migrations/versions`` create exactly
these; ``tests/test_store.py`` checks that the migrated schema and this metadata do not differ.

Nothing here holds pixels or DICOM identifiers: a study is its content hash (sha256 of the file's bytes), a
finding is ``Finding.to_dict()`` (the de-identified CLI JSON). Review marks and audit events are append-only.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

KEY_LEN = 64  # sha256 hex
NAMING = {"ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
          "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None:
            value = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
        return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class FindingRow(Base):
    """The latest finding of one study (re-analysing it with another bundle replaces it)."""

    __tablename__ = "findings"
    key: Mapped[str] = mapped_column(String(KEY_LEN), primary_key=True)
    data: Mapped[dict] = mapped_column(JSON)
    bundle_name: Mapped[str] = mapped_column(String(200))
    bundle_version: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class WorklistRowModel(Base):
    __tablename__ = "worklists"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    entries: Mapped[list["EntryRow"]] = relationship(back_populates="worklist", cascade="all, delete-orphan",
                                                     order_by="EntryRow.position")


class EntryRow(Base):
    """One study of a worklist: its content hash and the name shown for it (1-based upload position)."""

    __tablename__ = "worklist_entries"
    __table_args__ = (UniqueConstraint("worklist_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    worklist_id: Mapped[str] = mapped_column(ForeignKey("worklists.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    study_key: Mapped[str | None] = mapped_column(String(KEY_LEN), nullable=True, index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    worklist: Mapped[WorklistRowModel] = relationship(back_populates="entries")


class MarkRow(Base):
    """One review mark, never updated: the latest row per (study, reviewer) is that reviewer's current mark.
    ``review`` is "agree", "disagree" or None (the reviewer withdrew the mark)."""

    __tablename__ = "review_marks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_key: Mapped[str] = mapped_column(String(KEY_LEN))
    worklist_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    review: Mapped[str | None] = mapped_column(String(20), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(200))
    bundle_version: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


Index("ix_review_marks_study_key_reviewer", MarkRow.study_key, MarkRow.reviewer)  # revision 0002


class AuditRow(Base):
    """Who did what to which study (content hash) with which bundle, and how it ended. No names, no files."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    user: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(20))
    study_key: Mapped[str | None] = mapped_column(String(KEY_LEN), nullable=True)
    bundle_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    outcome: Mapped[str] = mapped_column(String(200), default="ok")
