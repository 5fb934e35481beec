"""The worklist's rows in memory: one upload's (or PACS fill's) :class:`Worklist` and the bounded
:class:`WorklistStore` of open worklists (file names / labels, verdicts, numbers and marks; no pixels)."""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

from spine_ui.lru import LRU
from spine_ui.services.batch import WorklistRow, sort_key, with_review

MAX_WORKLISTS = 32


@dataclass
class Worklist:
    """The rows of one upload, in upload order (the table shows them sorted)."""

    id: str
    total: int
    rows: list[WorklistRow] = field(default_factory=list)
    running: bool = True
    stop_requested: bool = False
    store_id: str | None = None  # the worklist's id in the review database (None: not saved)
    reopened: bool = False  # rebuilt from the database: a new upload fills in its studies' pixels
    #: The study the page shows now ('#'); updates still arriving for another one (a slow LIME, a superseded
    #: open) are dropped instead of overwriting the panel. None once the page moved on to another worklist.
    current: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, row: WorklistRow) -> None:
        with self.lock:
            self.rows.append(row)

    def row(self, number: int | None) -> WorklistRow | None:
        with self.lock:
            if number is None or not 1 <= int(number) <= len(self.rows):
                return None
            return self.rows[int(number) - 1]

    def set_review(self, number: int, review: str | None, comment: str | None, reviewer: str | None = None,
                   reviewed_at: str | None = None) -> WorklistRow:
        with self.lock:
            row = with_review(self.rows[number - 1], review, comment, reviewer, reviewed_at)
            self.rows[number - 1] = row
            return row

    def ordered(self) -> list[tuple[int, WorklistRow]]:
        """``(number, row)`` most suspicious first; ``number`` is the 1-based upload position (stable)."""
        with self.lock:
            pairs = list(enumerate(self.rows, 1))
        return sorted(pairs, key=lambda p: sort_key(p[1]))


class WorklistStore:
    """The open worklists, bounded (LRU): only file names, verdicts, numbers and review marks, no pixels."""

    def __init__(self, size: int = MAX_WORKLISTS) -> None:
        self._items: LRU[str, Worklist] = LRU(size)

    def create(self, total: int) -> Worklist:
        wl = Worklist(uuid.uuid4().hex, total)
        self._items.put(wl.id, wl)
        return wl

    def put(self, wl: Worklist) -> Worklist:
        self._items.put(wl.id, wl)
        return wl

    def get(self, wl_id: str | None) -> Worklist | None:
        return self._items.get(wl_id or None)


__all__ = ["MAX_WORKLISTS", "Worklist", "WorklistStore"]
