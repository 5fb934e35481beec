"""The worklist tab: many studies at once, sorted by risk, reviewed case by case.

Handlers only (the layout lives in ``layout.worklist_tab``); like :class:`~spine_ui.ui.handlers.SpineUI` they are plain
generators yielding ``{output name: value}`` and can be called without a server. Opening a study reuses
SpineUI's own streaming and views (``SpineUI.run`` / ``view`` / ``failed``), so a worklist case looks exactly like
the single-study result.

What the server holds: each upload's bytes in SpineUI's in-memory LRU keyed by content hash (gradio's temporary
copies are deleted as soon as they are read), the analyses in the Analyzer's cache, and per worklist only the
rows (file name, verdict, numbers, review marks) in a small bounded store. The browser session keeps the
worklist id. Downloads are written to a per-request temporary folder that is removed when the handler ends.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import gradio as gr

from spine_ui.errors import InputError, StoreError
from spine_ui.lru import LRU
from spine_ui.core.pipeline import AnalysisOptions
from spine_ui.services.store.reviews import iso
from spine_ui.ui.worklist_views import (intro_html, nav_html, placeholder_html, status_note, summary_html,  # noqa: F401
                                        table_row)
from spine_ui.services.batch import (ArchiveLimits, Item, WorklistRow, analyze_batch, expand_upload, safe_name, sort_key,
                        to_csv, to_json, with_review)

log = logging.getLogger(__name__)

CSV_NAME = "spinexr-worklist.csv"
JSON_NAME = "spinexr-worklist.json"
TABLE_HEADERS = ["#", "Study", "Verdict", "P(abnormal)", "Lesions", "Lesion types / reason", "Review"]
TABLE_TYPES = ["number", "str", "str", "str", "str", "str", "str"]
REVIEW_CHOICES = [("Agree", "agree"), ("Disagree", "disagree"), ("No mark", "none")]
MAX_WORKLISTS = 32
#: Zip limits for uploads (the server holds everything in memory): fewer bytes than the CLI allows.
UPLOAD_LIMITS = ArchiveLimits(max_members=500, max_total_bytes=1024 ** 3)
NO_WORKLIST = "This worklist is no longer held on the server (it expired or was replaced). Upload the files again."
LIMIT_REASON = ("Not analysed: a worklist holds at most {n} studies (this server's cache size). Upload the rest "
                "as another worklist.")
STOPPED_REASON = "Not analysed: the worklist was stopped before this study."
GENERIC_STOP = "Not analysed: the worklist stopped after an unexpected failure; please try again."
GONE_STUDY = ("This study is no longer held in memory (the server keeps only the most recent ones). Upload it "
              "again.")

#: "Leave the page as it is" (a handler must yield at least one update).
UNCHANGED: dict[str, Any] = {"wl_saved": gr.skip()}

#: Outputs of the worklist handlers besides the result panel's (``app.OUTPUTS``).
WL_OUTPUTS = ("wl_id", "wl_files", "wl_table", "wl_status", "wl_progress", "wl_csv", "wl_json", "wl_stop",
              "wl_pos", "wl_nav", "wl_prev", "wl_next", "wl_review", "wl_comment", "wl_saved")


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


class WorklistUI:
    """Worklist handlers over a :class:`~spine_ui.ui.handlers.SpineUI` (its uploads, LRU, analyzer and views)."""

    def __init__(self, spine: Any, max_studies: int | None = None, limits: ArchiveLimits = UPLOAD_LIMITS) -> None:
        self.ui = spine
        self.analyzer = spine.analyzer
        self.max_studies = max(1, int(max_studies or self.analyzer.cache_size))
        self.limits = limits
        self.store = WorklistStore()

    # --- batch ------------------------------------------------------------------------------------------
    def batch_options(self, always: bool) -> AnalysisOptions:
        """Triage for every study; boxes + Grad-CAM for abnormal ones (all with ``always``); LIME on opening."""
        return AnalysisOptions(detect="always" if always else "auto", gradcam=True, lime=False,
                               explain_normal=bool(always))

    def read_uploads(self, paths: Iterable[str] | None) -> list[Item]:
        """Read every uploaded file into memory (deleting gradio's copies), expand archives, cap the count."""
        items: list[Item] = []
        for p in paths or ():
            p = getattr(p, "name", p)  # gradio may hand over file wrappers
            if not p:
                continue
            name = Path(str(p)).name  # gradio keeps the original file name; never a folder path
            try:
                data = self.ui.take_upload(p)
            except InputError as exc:
                items.append((safe_name(name), exc))
                continue
            items.extend(expand_upload(name, data, limits=self.limits))
        if len(items) > self.max_studies:
            reason = InputError(LIMIT_REASON.format(n=self.max_studies))
            items = items[:self.max_studies] + [(name, reason) for name, _ in items[self.max_studies:]]
        return items

    def on_upload(self, paths: list[str] | None, always: bool, progress: Any = None, user: str = "local",
                  wl_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Analyse every uploaded study; the table fills in (sorted, most suspicious first) as each is done.
        Each study's finding, its worklist entry and an audit event go to the review database; marks already
        stored for a study (same content) come back. Uploading into a reopened worklist (``wl_id``) fills in
        the pixels of its studies (same content hash) and appends the others."""
        items = self.read_uploads(paths)
        if not items:
            yield dict(UNCHANGED)
            return
        reviews = self.ui.reviews
        old = self.store.get(wl_id)
        if old is not None and old.reopened and not old.running:
            wl = old
            wl.total, wl.running, wl.stop_requested = len(wl.rows) + len(items), True, False
            known = {r.key: n for n, r in enumerate(wl.rows, 1) if r.key}
        else:
            wl = self.store.create(len(items))
            wl.store_id = reviews.new_worklist(user)
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
            first = {**self.panel_placeholder(), "state": None, "wl_id": wl.id, "wl_files": None,
                     "wl_pos": None, "wl_nav": nav_html(None, 0, None), "wl_prev": gr.update(interactive=False),
                     "wl_next": gr.update(interactive=False), "wl_review": gr.update(value=None),
                     "wl_comment": gr.update(value=""), "wl_saved": "", "wl_stop": gr.update(visible=True)}
            yield {**first, **self.list_view(wl, workdir)}
            if progress is not None:
                progress((0, wl.total), desc="Analysing studies", unit="studies")
            failed = False
            try:
                for row in analyze_batch(self.analyzer, feed(), self.batch_options(always), progress=tick):
                    data = held.pop("data", None)
                    if data is not None and row.key and row.verdict != "unreadable":
                        self.ui.recent.put(row.key, data)  # bytes in memory only, by content hash (for reopening)
                    self.persist(wl, row, user, known)
                    yield self.list_view(wl, workdir)
            except Exception as exc:  # e.g. the bundle became unusable: never a traceback in the page
                log.error("Worklist stopped (%s).", type(exc).__name__)
                failed = True
            if wl.stop_requested or failed:
                reason = STOPPED_REASON if not failed else GENERIC_STOP
                for name, _src in items[len(wl.rows) - start:]:
                    wl.add(WorklistRow(safe_name(name), "unreadable", gate=self._gate(), reason=reason))
            wl.running = False
            yield {**self.list_view(wl, workdir), "wl_stop": gr.update(visible=False)}
        finally:
            wl.running = False
            # Runs after gradio has copied the files of the last update into its cache.
            shutil.rmtree(workdir, ignore_errors=True)

    def persist(self, wl: Worklist, row: WorklistRow, user: str, known: dict[str, int]) -> None:
        """Keep the study's finding and worklist entry, audit it, and show marks already stored for it."""
        reviews = self.ui.reviews
        a = self.analyzer.cached(row.key) if row.key else None
        if a is not None:
            reviews.record_finding(a.finding(), user)
        else:
            reviews.audit(user, "analysed", row.key, self.ui.info.get("version"), row.verdict)
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

    def on_stop(self, wl_id: str | None) -> dict[str, Any]:
        """Ask a running worklist to stop after the study in progress (rows so far are kept)."""
        wl = self.store.get(wl_id)
        if wl is not None and wl.running:
            wl.stop_requested = True
            return {"wl_progress": status_note("Stopping after the current study...")}
        return {"wl_progress": ""}

    def on_replace(self, wl_id: str | None) -> dict[str, Any]:
        """A new upload replaces the session's worklist: stop the old one and drop its pending updates."""
        out = self.on_stop(wl_id)
        wl = self.store.get(wl_id)
        if wl is not None:
            wl.current = None
        return out

    def guard(self, wl_id: str | None, number: Any, updates: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pass on ``updates`` for study ``number`` only while the page still shows it (explanations run in
        another queue than opening a study, so they can finish after the reviewer moved on)."""
        wl = self.store.get(wl_id)
        try:
            for out in updates:
                if wl is None or number is None or wl.current != number:
                    yield {"explain_note": gr.skip()}
                    return
                yield out
        finally:
            close = getattr(updates, "close", None)
            if close is not None:
                close()  # runs the handler's clean-up (its per-request folder) now

    # --- opening a case ---------------------------------------------------------------------------------
    def on_select(self, wl_id: str | None, number: Any, always: bool, lime_samples: float,
                  progress: Any = None, user: str = "local") -> Iterator[dict[str, Any]]:
        """Open the study at upload position ``number`` (the table's '#' column) in the result panel."""
        try:
            number = int(number)
        except (TypeError, ValueError):
            yield dict(UNCHANGED)
            return
        yield from self.open_case(wl_id, number, always, lime_samples, progress, user)

    def on_step(self, wl_id: str | None, current: Any, delta: int, always: bool, lime_samples: float,
                progress: Any = None, user: str = "local") -> Iterator[dict[str, Any]]:
        """Previous (-1) / next (+1) study in the table's order (most suspicious first)."""
        wl = self.store.get(wl_id)
        if wl is None:
            yield self.gone()
            return
        numbers = [n for n, _ in wl.ordered()]
        if not numbers:
            yield dict(UNCHANGED)
            return
        if current in numbers:
            i = min(max(numbers.index(current) + delta, 0), len(numbers) - 1)
        else:
            i = 0
        yield from self.open_case(wl_id, numbers[i], always, lime_samples, progress, user)

    def open_case(self, wl_id: str | None, number: int, always: bool, lime_samples: float,
                  progress: Any = None, user: str = "local") -> Iterator[dict[str, Any]]:
        wl = self.store.get(wl_id)
        if wl is None:
            yield self.gone()
            return
        row = wl.row(number)
        if row is None:
            yield dict(UNCHANGED)
            return
        wl.current = number
        numbers = [n for n, _ in wl.ordered()]
        pos = numbers.index(number) if number in numbers else 0
        base = {"wl_pos": number, "wl_nav": nav_html(pos, len(numbers), row),
                "wl_prev": gr.update(interactive=pos > 0), "wl_next": gr.update(interactive=pos < len(numbers) - 1),
                "wl_review": gr.update(value=row.review or "none"), "wl_comment": gr.update(value=row.comment),
                "wl_saved": ""}
        data = self.ui.source(row.key) if row.verdict != "unreadable" else None
        self.ui.reviews.audit(user, "opened", row.key, self.ui.info.get("version"),
                              "in memory" if data is not None else "not in memory")
        stored = self.ui.reviews.stored_finding(row.key) if data is None and row.key else None
        if stored is not None:  # pixels gone (restart): the stored finding and marks, no images
            out = self.ui.stored_view(stored)
            out["state"] = None
            yield {**out, **base}
            return
        if data is None:
            title, message = (("The file could not be read", row.reason or "The file could not be read.")
                              if row.verdict == "unreadable" else ("Study not in memory", GONE_STUDY))
            out = self.ui.failed(title, message)
            out["state"] = None
            yield {**out, **base}
            return
        opts = self.ui.options(always, lime_samples, explain=False, lime=False)
        first = True
        updates = self.ui.run(data, opts, progress=progress)  # cached: nothing is recomputed
        base["state"] = row.key if row.accepted else None
        try:
            for out in updates:
                if wl.current != number:  # the reviewer already opened another study
                    yield dict(UNCHANGED)
                    return
                if first:
                    out = {**out, **base}
                    first = False
                yield out
        finally:
            updates.close()

    # --- review marks -----------------------------------------------------------------------------------
    def on_review(self, wl_id: str | None, number: Any, review: str | None, comment: str | None,
                  user: str = "local") -> Iterator[dict[str, Any]]:
        """Store the reviewer's mark (agree / disagree / none) and comment on the open case. The database
        commit comes first: "Saved" is said only after it; a failure says so and leaves the row unchanged."""
        wl = self.store.get(wl_id)
        if wl is None:
            yield {"wl_saved": status_note(NO_WORKLIST, error=True)}
            return
        try:
            number = int(number)
            row = wl.row(number)
            if row is None:
                raise IndexError(number)
            if row.key is None:
                yield {"wl_saved": status_note("This file could not be read: there is nothing to review.",
                                               error=True)}
                return
            mark = self.ui.reviews.set_mark(row.key, review, comment, user, self.ui.info.get("version", ""),
                                            wl.store_id)
        except (TypeError, ValueError, IndexError):
            yield {"wl_saved": status_note("Open a study from the worklist first.", error=True)}
            return
        except StoreError as exc:
            yield {"wl_saved": status_note(f"NOT saved: {exc.user_message}", error=True)}
            return
        row = wl.set_review(number, mark.review, mark.comment, mark.reviewer, iso(mark))
        workdir = Path(tempfile.mkdtemp(prefix="spinexr-wl-"))
        try:
            label = row.review or "no mark"
            note = (f"Saved: {label}" + (" with comment" if row.comment else "") + f" for {row.study} "
                    f"({mark.reviewer}, {mark.time:%Y-%m-%d %H:%M} UTC).")
            yield {**self.list_view(wl, workdir), "wl_saved": status_note(note)}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    # --- views --------------------------------------------------------------------------------------------
    def list_view(self, wl: Worklist, workdir: Path) -> dict[str, Any]:
        """Table (sorted), summary, and CSV + JSON downloads written to ``workdir``."""
        ordered = wl.ordered()
        rows = [r for _, r in ordered]
        out: dict[str, Any] = {"wl_table": gr.update(value=[table_row(n, r) for n, r in ordered]),
                               "wl_status": summary_html(rows, wl.total, wl.running),
                               "wl_progress": ""}
        if rows:
            csv_path, json_path = workdir / CSV_NAME, workdir / JSON_NAME
            csv_path.write_text(to_csv(rows), encoding="utf-8")
            json_path.write_text(to_json(rows, self.ui.info), encoding="utf-8")
            out["wl_csv"] = gr.update(value=str(csv_path), visible=True)
            out["wl_json"] = gr.update(value=str(json_path), visible=True)
        else:
            out["wl_csv"] = gr.update(value=None, visible=False)
            out["wl_json"] = gr.update(value=None, visible=False)
        return out

    def panel_placeholder(self) -> dict[str, Any]:
        out = self.ui.cleared()
        out["triage"] = placeholder_html()
        return out

    def gone(self) -> dict[str, Any]:
        out = self.ui.failed("Worklist expired", NO_WORKLIST)
        out["state"] = None
        return out

    def _gate(self) -> float:
        return self.analyzer.bundle.manifest.triage.gate


def _remembering(reader, held: dict[str, bytes | None]):
    def read() -> bytes:
        held["data"] = data = reader()
        return data

    return read


__all__ = ["CSV_NAME", "JSON_NAME", "TABLE_HEADERS", "WL_OUTPUTS", "Worklist", "WorklistStore", "WorklistUI",
           "intro_html", "nav_html", "placeholder_html", "status_note", "summary_html", "table_row"]
