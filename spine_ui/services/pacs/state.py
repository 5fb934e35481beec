"""What the PACS loop has processed: a tiny ``ProcessedLog`` protocol and its SQLite implementation.

The loop marks an instance only after its SR and SC are stored (or after deciding to skip it), so a re-run
or restart repeats nothing that finished and never leaves a study half-stored-and-marked. The protocol is
small on purpose so the project's SQLAlchemy store can implement it later and replace this file.
Rows hold UIDs, a status and a timestamp - no patient identity.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol


class ProcessedLog(Protocol):
    def seen(self, sop_uid: str, bundle: str) -> bool:
        """True when this instance was already processed (stored or skipped) with this bundle."""

    def mark(self, sop_uid: str, bundle: str, status: str, study_uid: str = "") -> None:
        """Record the outcome: "stored", "skipped: <reason>" or "unreadable: <reason>"."""

    def status(self, sop_uid: str, bundle: str) -> str | None:
        """The recorded outcome, or None when this instance was not processed with this bundle."""


class SqliteProcessedLog:
    """``ProcessedLog`` in one SQLite file (created with its folder on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS processed (sop_uid TEXT NOT NULL, bundle TEXT NOT NULL, "
                         "study_uid TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, at REAL NOT NULL, "
                         "PRIMARY KEY (sop_uid, bundle))")

    def seen(self, sop_uid: str, bundle: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM processed WHERE sop_uid = ? AND bundle = ?",
                                   (sop_uid, bundle)).fetchone()
        return row is not None

    def mark(self, sop_uid: str, bundle: str, status: str, study_uid: str = "") -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO processed VALUES (?, ?, ?, ?, ?)",
                             (sop_uid, bundle, study_uid, status[:200], time.time()))

    def status(self, sop_uid: str, bundle: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM processed WHERE sop_uid = ? AND bundle = ?",
                                   (sop_uid, bundle)).fetchone()
        return row[0] if row else None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
