"""The persistent store: findings, worklists, review marks and the audit log (SQLite by default, PostgreSQL
with ``SPINE_DATABASE_URL``), Alembic migrations applied at start. See :class:`Store`."""
from spine_ui.services.store.engine import current_revision, head_revision, make_engine, upgrade
from spine_ui.services.store.store import (ACTIONS, AuditEvent, Entry, Mark, PurgeResult, Store, StoredFinding,
                                           StoredWorklist, WorklistSummary, clean_review)

__all__ = ["ACTIONS", "AuditEvent", "Entry", "Mark", "PurgeResult", "Store", "StoredFinding", "StoredWorklist",
           "WorklistSummary", "clean_review", "current_revision", "head_revision", "make_engine", "upgrade"]
