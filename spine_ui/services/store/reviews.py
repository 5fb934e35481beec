"""``Reviews``: the app's fault-tolerant use of the :class:`Store` (no gradio here).

The analysis never depends on the database: a store that cannot be opened (locked, read-only, full, corrupt,
PostgreSQL down) is retried on later calls, findings and audit events are then skipped with a logged warning,
and :attr:`Reviews.error` carries the message the page shows. A review mark is different: :meth:`set_mark`
raises the :class:`~spine_ui.errors.StoreError`, so the page reports "saved" only after the commit.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from sqlalchemy.engine import make_url

from spine_ui.config import StoreConfig
from spine_ui.core.finding import Finding
from spine_ui.errors import StoreError
from spine_ui.services.batch.rows import GENERIC_FAILURE, WorklistRow, row_from_finding
from spine_ui.services.store.store import Entry, Mark, Store, StoredWorklist, WorklistSummary

log = logging.getLogger(__name__)
RETRY_S = 5.0
STORED_GONE = "The stored finding of this study was deleted (retention period); upload the file again."


def iso(mark: Mark) -> str:
    return mark.time.isoformat(timespec="seconds")


def shown_mark(marks: Sequence[Mark], user: str) -> Mark | None:
    """The mark a row shows: the user's own current mark, else the latest of any reviewer."""
    own = [m for m in marks if m.reviewer == user]
    return (own or list(marks) or [None])[-1]


def with_mark(row: WorklistRow, mark: Mark | None) -> WorklistRow:
    if mark is None:
        return replace(row, review=None, comment="", reviewer=None, reviewed_at=None)
    return replace(row, review=mark.review, comment=mark.comment, reviewer=mark.reviewer, reviewed_at=iso(mark))


class Reviews:
    """Findings, worklists, marks and audit events for the app, tolerant of a database that is not there."""

    def __init__(self, config: StoreConfig | None = None, store: Store | None = None,
                 opener: Callable[[StoreConfig], Store] = Store.open) -> None:
        self.config = config or StoreConfig.from_env()
        self._opener = opener
        self._store = store
        self._lock = threading.Lock()
        self._next_try = 0.0
        self.error: str | None = None
        if store is None:
            self.store()  # migrate at start; a failure is kept in ``error`` and retried later

    # ------------------------------------------------------------------ plumbing
    def store(self) -> Store | None:
        with self._lock:
            if self._store is None and time.monotonic() >= self._next_try:
                try:
                    self._store = self._opener(self.config)
                    self.error = None
                except StoreError as exc:
                    self.error = exc.user_message
                    self._next_try = time.monotonic() + RETRY_S
                    log.warning("Review database not available (%s).", type(exc).__name__)
            return self._store

    def require(self) -> Store:
        s = self.store()
        if s is None:
            raise StoreError(self.error)
        return s

    def _try(self, fn: Callable[[Store], Any], default: Any = None, write: bool = False) -> Any:
        """``fn(store)``; a store error is remembered in ``error`` (until a write succeeds) and gives
        ``default``."""
        s = self.store()
        if s is None:
            return default
        try:
            out = fn(s)
            if write:
                self.error = None
            return out
        except StoreError as exc:
            self.error = exc.user_message
            log.warning("Review database call failed (%s).", type(exc).__name__)
            return default

    def describe(self) -> str:
        """Where reviews go, for the page (no password)."""
        if self.config.database_url:
            url = make_url(self.config.url)
            return f"PostgreSQL ({url.host or 'local socket'}/{url.database})"
        return f"SQLite ({self.config.data_dir / 'spine.db'})"

    def display_name(self, name: str, key: str | None) -> str:
        """What a worklist entry keeps of the file name (all of it, or a neutral label)."""
        if self.config.store_names:
            return name
        return f"study-{key[:12]}" if key else "study (unreadable)"

    # ------------------------------------------------------------------ app calls
    def audit(self, user: str, action: str, key: str | None = None, version: str | None = None,
              outcome: str = "ok") -> None:
        self._try(lambda s: s.audit(user, action, key, version, outcome, raise_errors=True), write=True)

    def record_finding(self, finding: Finding, user: str) -> None:
        """Keep an analysed study's finding and audit it (skipped when the database is not available)."""
        if finding.key and not finding.error:
            self._try(lambda s: s.save_finding(finding), write=True)
        outcome = finding.verdict or "ok"
        self.audit(user, "analysed", finding.key, finding.bundle.version, outcome)

    def new_worklist(self, user: str, title: str = "") -> str | None:
        return self._try(lambda s: s.create_worklist(user, title), write=True)

    def save_rows(self, worklist_id: str | None, numbered: Sequence[tuple[int, WorklistRow]]) -> None:
        if not worklist_id:
            return
        entries = [Entry(n, r.key, self.display_name(r.study, r.key), r.verdict, r.reason) for n, r in numbered]
        self._try(lambda s: s.add_to_worklist(worklist_id, entries), write=True)

    def with_marks(self, rows: Sequence[WorklistRow], user: str) -> list[WorklistRow]:
        """``rows`` with the marks already stored for their studies (a re-uploaded study finds its marks)."""
        keys = [r.key for r in rows if r.key]
        if not keys:
            return list(rows)
        marks = self._try(lambda s: {k: s.marks_for(k) for k in set(keys)}, {})
        return [with_mark(r, shown_mark(marks.get(r.key, ()), user)) if r.key in marks else r for r in rows]

    def set_mark(self, key: str, review: str | None, comment: str | None, user: str, version: str,
                 worklist_id: str | None = None) -> Mark:
        """Append the mark and return it after the commit; raises StoreError when it could not be saved."""
        try:
            mark = self.require().set_mark(key, review, comment, user, version, worklist_id)
        except StoreError as exc:
            self.error = exc.user_message
            self.audit(user, "marked", key, version, "not saved")
            raise
        self.error = None
        self.audit(user, "marked", key, version, mark.review or "withdrawn")
        return mark

    def worklists(self, user: str | None) -> list[WorklistSummary]:
        return self._try(lambda s: s.list_worklists(user), [])

    def reopen(self, worklist_id: str, user: str) -> tuple[list[WorklistRow], StoredWorklist] | None:
        """The rows of a saved worklist in upload order (from stored findings and marks), or None."""
        stored: StoredWorklist | None = self._try(lambda s: s.get_worklist(worklist_id))
        if stored is None:
            return None
        rows = []
        for e in stored.entries:
            f = stored.findings.get(e.key) if e.key else None
            if f is not None:
                row = row_from_finding(e.display_name, f.finding)
            else:
                gone = e.verdict not in ("rejected", "unreadable")  # its finding was deleted (retention)
                row = WorklistRow(e.display_name, "unreadable" if gone else e.verdict, key=e.key,
                                  reason=STORED_GONE if gone else (e.reason or GENERIC_FAILURE))
            rows.append(with_mark(row, shown_mark(stored.marks.get(e.key, ()), user)) if e.key else row)
        return rows, stored

    def stored_finding(self, key: str | None):
        """The stored finding of a study (None when unknown or the database is not available)."""
        return self._try(lambda s: s.get_finding(key)) if key else None
