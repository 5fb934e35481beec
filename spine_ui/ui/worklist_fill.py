"""Filling a worklist: uploads read into memory (archives expanded, count capped) and the streaming batch run
that analyses any ``(name, source)`` items - uploaded files or PACS instances alike - into worklist rows, each
persisted (finding, entry, audit) in the review database as it is done. Used by :class:`WorklistUI`."""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import gradio as gr

from spine_ui.errors import InputError
from spine_ui.services.batch import ArchiveLimits, Item, WorklistRow, analyze_batch, expand_upload, safe_name
from spine_ui.ui.worklist_model import Worklist
from spine_ui.ui.worklist_views import nav_html

log = logging.getLogger("spine_ui.ui.worklist")

#: Zip limits for uploads (the server holds everything in memory): fewer bytes than the CLI allows.
UPLOAD_LIMITS = ArchiveLimits(max_members=500, max_total_bytes=1024 ** 3)
LIMIT_REASON = ("Not analysed: a worklist holds at most {n} studies (this server's cache size). Upload the rest "
                "as another worklist.")
STOPPED_REASON = "Not analysed: the worklist was stopped before this study."
GENERIC_STOP = "Not analysed: the worklist stopped after an unexpected failure; please try again."
#: "Leave the page as it is" (a handler must yield at least one update).
UNCHANGED: dict[str, Any] = {"wl_saved": gr.skip()}


class WorklistIntake:
    """The intake of one :class:`~spine_ui.ui.worklist.WorklistUI` (its store, views and limits)."""

    def __init__(self, wl: Any) -> None:
        self.wl = wl

    def read_uploads(self, paths: Iterable[str] | None) -> list[Item]:
        """Read every uploaded file into memory (deleting gradio's copies), expand archives, cap the count."""
        items: list[Item] = []
        for p in paths or ():
            p = getattr(p, "name", p)  # gradio may hand over file wrappers
            if not p:
                continue
            name = Path(str(p)).name  # gradio keeps the original file name; never a folder path
            try:
                data = self.wl.ui.take_upload(p)
            except InputError as exc:
                items.append((safe_name(name), exc))
                continue
            items.extend(expand_upload(name, data, limits=self.wl.limits))
        return self.cap(items, LIMIT_REASON)

    def cap(self, items: list[Item], why: str) -> list[Item]:
        """Items past the worklist's size (the Analyzer's cache) become rows saying ``why`` (``{n}``: the size)."""
        n = self.wl.max_studies
        if len(items) <= n:
            return items
        reason = InputError(why.format(n=n))
        return items[:n] + [(name, reason) for name, _ in items[n:]]

    def fill(self, items: list[Item], always: bool, progress: Any = None, user: str = "local",
             wl_id: str | None = None, title: str = "") -> Iterator[dict[str, Any]]:
        """Analyse ``items`` (an upload's files, or studies read from the PACS); the table fills in (sorted, most
        suspicious first) as each is done, and a running fill can be stopped (:meth:`WorklistUI.on_stop`).
        Each study's finding, its worklist entry and an audit event go to the review database; marks already
        stored for a study (same content) come back. Filling a reopened worklist (``wl_id``) fills in the
        pixels of its studies (same content hash) and appends the others. ``title``: the saved worklist's."""
        w = self.wl
        if not items:
            yield dict(UNCHANGED)
            return
        reviews = w.ui.reviews
        old = w.store.get(wl_id)
        if old is not None and old.reopened and not old.running:
            wl = old
            wl.total, wl.running, wl.stop_requested = len(wl.rows) + len(items), True, False
            known = {r.key: n for n, r in enumerate(wl.rows, 1) if r.key}
        else:
            wl = w.store.create(len(items))
            wl.store_id = reviews.new_worklist(user, title)
            known = {}
        start = len(wl.rows)
        workdir = Path(tempfile.mkdtemp(prefix="spinexr-wl-"))
        held: dict[str, bytes | None] = {}

        def feed() -> Iterator[Item]:
            for name, src in items:
                if wl.stop_requested:
                    return
                held["data"] = None
                if isinstance(src, (bytes, bytearray)):
                    held["data"] = bytes(src)
                elif callable(src) and not isinstance(src, InputError):
                    src = _remembering(src, held)
                yield name, src

        def tick(done: int, _total: int | None, _row: WorklistRow) -> None:
            if progress is not None:
                progress((done, wl.total), desc="Analysing studies", unit="studies")

        try:
            first = {**w.panel_placeholder(), "state": None, "wl_id": wl.id, "wl_files": None,
                     "wl_pos": None, "wl_nav": nav_html(None, 0, None), "wl_prev": gr.update(interactive=False),
                     "wl_next": gr.update(interactive=False), "wl_review": gr.update(value=None),
                     "wl_comment": gr.update(value=""), "wl_saved": "", "wl_stop": gr.update(visible=True),
                     **w.case_extras(None)}
            yield {**first, **w.list_view(wl, workdir)}
            if progress is not None:
                progress((0, wl.total), desc="Analysing studies", unit="studies")
            failed = False
            try:
                for row in analyze_batch(w.analyzer, feed(), w.batch_options(always), progress=tick):
                    data = held.pop("data", None)
                    if data is not None and row.key and row.verdict != "unreadable":
                        w.ui.recent.put(row.key, data)  # bytes in memory only, by content hash (for reopening)
                    self.persist(wl, row, user, known)
                    yield w.list_view(wl, workdir)
            except Exception as exc:  # e.g. the bundle became unusable: never a traceback in the page
                log.error("Worklist stopped (%s).", type(exc).__name__)
                failed = True
            if wl.stop_requested or failed:
                reason = STOPPED_REASON if not failed else GENERIC_STOP
                for name, _src in items[len(wl.rows) - start:]:
                    wl.add(WorklistRow(safe_name(name), "unreadable", gate=w.gate(), reason=reason))
            wl.running = False
            yield {**w.list_view(wl, workdir), "wl_stop": gr.update(visible=False)}
        finally:
            wl.running = False
            # Runs after gradio has copied the files of the last update into its cache.
            shutil.rmtree(workdir, ignore_errors=True)

    def persist(self, wl: Worklist, row: WorklistRow, user: str, known: dict[str, int]) -> None:
        """Keep the study's finding and worklist entry, audit it, and show marks already stored for it."""
        w = self.wl
        reviews = w.ui.reviews
        a = w.analyzer.cached(row.key) if row.key else None
        if a is not None:
            reviews.record_finding(a.finding(), user)
        else:
            reviews.audit(user, "analysed", row.key, w.ui.info.get("version"), row.verdict)
        row = reviews.with_marks([row], user)[0]
        if row.key in known:  # a reopened worklist's study uploaded again: same row, now with its pixels
            wl.total -= 1
            with wl.lock:
                number = known[row.key]
                old = wl.rows[number - 1]
                keep = {} if row.review else dict(review=old.review, comment=old.comment, reviewer=old.reviewer,
                                                  reviewed_at=old.reviewed_at)
                wl.rows[number - 1] = replace(row, study=old.study, **keep)
            return
        wl.add(row)
        reviews.save_rows(wl.store_id, [(len(wl.rows), row)])



def _remembering(reader, held: dict[str, bytes | None]):
    def read() -> bytes:
        held["data"] = data = reader()
        return data

    return read


def _remembering(reader, held: dict[str, bytes | None]):
    def read() -> bytes:
        held["data"] = data = reader()
        return data

    return read


__all__ = ["GENERIC_STOP", "LIMIT_REASON", "STOPPED_REASON", "UNCHANGED", "UPLOAD_LIMITS", "WorklistIntake"]
