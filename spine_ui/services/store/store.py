"""``Store``: the typed facade over the database (findings, worklists, review marks, audit log).

Every method opens its own short transaction; a write returns only after its commit, so a mark the UI reports
as saved is on disk (SQLite: WAL + ``synchronous=FULL``) or in PostgreSQL. Driver failures surface as
:class:`~spine_ui.errors.StoreError` subclasses with a message for the user, except :meth:`Store.audit`, which
logs and returns False so that a broken database never stops an analysis.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from spine_ui.config import StoreConfig
from spine_ui.core.finding import Finding
from spine_ui.errors import StoreError, StoreLockedError
from spine_ui.services.batch.rows import MAX_COMMENT, clean_review
from spine_ui.services.batch.rows import clean_text as _clean_text
from spine_ui.services.store import engine as E
from spine_ui.services.store.models import AuditRow, EntryRow, FindingRow, MarkRow, WorklistRowModel, utcnow

log = logging.getLogger(__name__)

ACTIONS = ("analysed", "opened", "explained", "marked", "exported", "refused", "signin_failed")
MAX_TEXT = 200
WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class StoredFinding:
    key: str
    finding: Finding
    bundle_name: str
    bundle_version: str
    saved_at: dt.datetime


@dataclass(frozen=True)
class Mark:
    """One review mark; ``review`` None means the reviewer withdrew an earlier mark."""

    id: int
    study_key: str
    review: str | None
    comment: str
    reviewer: str
    time: dt.datetime
    bundle_version: str
    worklist_id: str | None = None


@dataclass(frozen=True)
class Entry:
    position: int
    key: str | None
    display_name: str
    verdict: str
    reason: str | None = None


@dataclass(frozen=True)
class WorklistSummary:
    id: str
    owner: str
    title: str
    created_at: dt.datetime
    studies: int


@dataclass(frozen=True)
class StoredWorklist:
    """A worklist as saved: its entries, each study's stored finding and every reviewer's current mark."""

    summary: WorklistSummary
    entries: tuple[Entry, ...]
    findings: dict[str, StoredFinding] = field(default_factory=dict)
    marks: dict[str, tuple[Mark, ...]] = field(default_factory=dict)  # key -> current mark per reviewer


@dataclass(frozen=True)
class AuditEvent:
    time: dt.datetime
    user: str
    action: str
    study_key: str | None
    bundle_version: str | None
    outcome: str


@dataclass(frozen=True)
class PurgeResult:
    cutoff: dt.datetime
    findings: int
    marks: int
    worklists: int
    audit_events: int


def clean_text(text: str | None, limit: int = MAX_TEXT) -> str:
    """Names and short fields: the worklist's text cleaning with the store's shorter default cap."""
    return _clean_text(text, limit)


class Store:
    """Findings, worklists, marks and audit events in one database (see the module docstring)."""

    def __init__(self, engine: Engine, config: StoreConfig | None = None) -> None:
        self.engine = engine
        self.config = config or StoreConfig()
        self._session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, config: StoreConfig | None = None, migrate: bool = True) -> "Store":
        """Connect (creating the SQLite file on first use) and bring the schema up to date."""
        config = config or StoreConfig.from_env()
        store = cls(E.make_engine(config), config)
        if migrate:
            E.upgrade(store.engine)
        return store

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def revision(self) -> str | None:
        return E.current_revision(self.engine)

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _tx(self) -> Iterator[Session]:
        try:
            with self._session.begin() as s:
                yield s
        except SQLAlchemyError as exc:
            raise E.translate(exc) from exc

    def _write(self, fn):
        """Run ``fn(session)`` in a transaction, retrying a locked SQLite database a few times."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._tx() as s:
                    return fn(s)
            except StoreLockedError:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _read(self, fn):
        with self._tx() as s:
            return fn(s)

    # ------------------------------------------------------------------ findings
    def save_finding(self, finding: Finding) -> None:
        """Keep ``finding`` (its ``to_dict()`` JSON) under its content hash; a newer analysis replaces it."""
        if not finding.key:
            raise ValueError("a finding needs its content hash (key) to be stored")
        data = finding.to_dict()

        def run(s: Session) -> None:
            row = s.get(FindingRow, finding.key)
            now = utcnow()
            if row is None:
                s.add(FindingRow(key=finding.key, data=data, bundle_name=clean_text(finding.bundle.name),
                                 bundle_version=clean_text(finding.bundle.version), created_at=now, updated_at=now))
            else:
                row.data, row.updated_at = data, now
                row.bundle_name, row.bundle_version = clean_text(finding.bundle.name), clean_text(finding.bundle.version)

        self._write(run)

    def get_finding(self, key: str | None) -> StoredFinding | None:
        if not key:
            return None
        return self._read(lambda s: _stored(s.get(FindingRow, key)))

    # ------------------------------------------------------------------ worklists
    def create_worklist(self, owner: str, title: str = "") -> str:
        wl_id = uuid.uuid4().hex
        self._write(lambda s: s.add(WorklistRowModel(id=wl_id, owner=clean_text(owner), title=clean_text(title),
                                                     created_at=utcnow())))
        return wl_id

    def add_to_worklist(self, worklist_id: str, entries: Sequence[Entry]) -> None:
        """Add (or replace, by position) entries of a worklist."""

        def run(s: Session) -> None:
            if s.get(WorklistRowModel, worklist_id) is None:
                raise KeyError(worklist_id)
            for e in entries:
                row = s.scalar(select(EntryRow).where(EntryRow.worklist_id == worklist_id,
                                                      EntryRow.position == e.position))
                if row is None:
                    row = EntryRow(worklist_id=worklist_id, position=e.position, added_at=utcnow())
                    s.add(row)
                row.study_key, row.display_name = e.key, clean_text(e.display_name) or "unnamed"
                row.verdict, row.reason = e.verdict, clean_text(e.reason, MAX_COMMENT) or None

        self._write(run)

    def list_worklists(self, user: str | None) -> list[WorklistSummary]:
        """``user``'s worklists, newest first (None: everyone's)."""

        def run(s: Session) -> list[WorklistSummary]:
            q = (select(WorklistRowModel, func.count(EntryRow.id)).outerjoin(EntryRow)
                 .group_by(WorklistRowModel.id).order_by(WorklistRowModel.created_at.desc()))
            if user is not None:
                q = q.where(WorklistRowModel.owner == user)
            return [_summary(w, n) for w, n in s.execute(q)]

        return self._read(run)

    def get_worklist(self, worklist_id: str | None) -> StoredWorklist | None:
        if not worklist_id:
            return None

        def run(s: Session) -> StoredWorklist | None:
            w = s.get(WorklistRowModel, worklist_id)
            if w is None:
                return None
            entries = tuple(Entry(e.position, e.study_key, e.display_name, e.verdict, e.reason) for e in w.entries)
            keys = sorted({e.key for e in entries if e.key})
            findings = {r.key: _stored(r) for r in s.scalars(select(FindingRow).where(FindingRow.key.in_(keys)))}
            marks = _current(s, keys)
            return StoredWorklist(_summary(w, len(entries)), entries, findings, marks)

        return self._read(run)

    # ------------------------------------------------------------------ review marks
    def set_mark(self, key: str, review: str | None, comment: str | None, reviewer: str, bundle_version: str,
                 worklist_id: str | None = None) -> Mark:
        """Append one mark; returns after the commit (a new row every time: nobody's mark is overwritten)."""
        if not key:
            raise ValueError("a mark needs the study's content hash")
        row = MarkRow(study_key=key, worklist_id=worklist_id, review=clean_review(review),
                      comment=clean_text(comment, MAX_COMMENT), reviewer=clean_text(reviewer) or "local",
                      bundle_version=clean_text(bundle_version) or "unknown", created_at=utcnow())
        self._write(lambda s: s.add(row))
        return _mark(row)

    def marks_for(self, key: str, history: bool = False) -> list[Mark]:
        """The current mark of every reviewer (oldest first), or with ``history`` every mark ever set."""
        if history:
            return self._read(lambda s: [_mark(m) for m in s.scalars(
                select(MarkRow).where(MarkRow.study_key == key).order_by(MarkRow.id))])
        return list(self._read(lambda s: _current(s, [key])).get(key, ()))

    # ------------------------------------------------------------------ audit
    def audit(self, user: str, action: str, key: str | None = None, bundle_version: str | None = None,
              outcome: str = "ok", raise_errors: bool = False) -> bool:
        """Append an audit event. A database failure is logged and gives False (raised with ``raise_errors``)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        row = AuditRow(time=utcnow(), user=clean_text(user) or "local", action=action, study_key=key,
                       bundle_version=clean_text(bundle_version) or None, outcome=clean_text(outcome) or "ok")
        try:
            self._write(lambda s: s.add(row))
            return True
        except StoreError as exc:
            if raise_errors:
                raise
            log.warning("Audit event not recorded (%s).", type(exc).__name__)
            return False

    def export_audit(self, since: dt.datetime | None = None) -> list[AuditEvent]:
        def run(s: Session) -> list[AuditEvent]:
            q = select(AuditRow).order_by(AuditRow.time, AuditRow.id)
            if since is not None:
                q = q.where(AuditRow.time >= since)
            return [AuditEvent(r.time, r.user, r.action, r.study_key, r.bundle_version, r.outcome)
                    for r in s.scalars(q)]

        return self._read(run)

    # ------------------------------------------------------------------ retention
    def purge(self, older_than: dt.timedelta | None = None, audit: bool = False) -> PurgeResult:
        """Delete findings, marks and worklists older than ``older_than`` (default: the configured retention),
        and with ``audit`` the audit events too."""
        if older_than is None:
            if self.config.retention_days <= 0:
                return PurgeResult(utcnow(), 0, 0, 0, 0)
            older_than = dt.timedelta(days=self.config.retention_days)
        cutoff = utcnow() - older_than

        def run(s: Session) -> PurgeResult:
            old = select(WorklistRowModel.id).where(WorklistRowModel.created_at < cutoff)
            s.execute(delete(EntryRow).where(EntryRow.worklist_id.in_(old)))
            n_wl = s.execute(delete(WorklistRowModel).where(WorklistRowModel.created_at < cutoff)).rowcount
            n_f = s.execute(delete(FindingRow).where(FindingRow.updated_at < cutoff)).rowcount
            n_m = s.execute(delete(MarkRow).where(MarkRow.created_at < cutoff)).rowcount
            n_a = s.execute(delete(AuditRow).where(AuditRow.time < cutoff)).rowcount if audit else 0
            return PurgeResult(cutoff, n_f, n_m, n_wl, n_a)

        return self._write(run)


# ---------------------------------------------------------------------- row -> typed result
def _stored(row: FindingRow | None) -> StoredFinding | None:
    if row is None:
        return None
    return StoredFinding(row.key, Finding.from_dict(row.data, key=row.key), row.bundle_name, row.bundle_version,
                         row.updated_at)


def _mark(m: MarkRow) -> Mark:
    return Mark(m.id, m.study_key, m.review, m.comment, m.reviewer, m.created_at, m.bundle_version, m.worklist_id)


def _summary(w: WorklistRowModel, n: int) -> WorklistSummary:
    return WorklistSummary(w.id, w.owner, w.title, w.created_at, int(n))


def _current(s: Session, keys: Sequence[str]) -> dict[str, tuple[Mark, ...]]:
    """Per study, the latest mark of each reviewer (ordered by time); withdrawn marks are left out."""
    if not keys:
        return {}
    latest = (select(func.max(MarkRow.id)).where(MarkRow.study_key.in_(list(keys)))
              .group_by(MarkRow.study_key, MarkRow.reviewer))
    out: dict[str, list[Mark]] = {}
    for m in s.scalars(select(MarkRow).where(MarkRow.id.in_(latest)).order_by(MarkRow.id)):
        if m.review is not None or m.comment:
            out.setdefault(m.study_key, []).append(_mark(m))
    return {k: tuple(v) for k, v in out.items()}
