"""The worklist tab: many studies at once, sorted by risk, reviewed case by case.

Handlers only (the layout lives in ``layout.worklist_tab``); like :class:`~spine_ui.ui.handlers.SpineUI` they are plain
generators yielding ``{output name: value}`` and can be called without a server. Opening a study reuses
SpineUI's own streaming and views (``SpineUI.run`` / ``view`` / ``failed``), so a worklist case looks exactly like
the single-study result.

What the server holds: each upload's bytes in SpineUI's in-memory LRU keyed by content hash (gradio's temporary
copies are deleted as soon as they are read), the analyses in the Analyzer's cache, and per worklist only the
rows (file name, verdict, numbers, review marks) in a small bounded store. The browser session keeps the
worklist id. Downloads are written to a per-request temporary folder that is removed when the handler ends.

Filling a worklist (uploads, or studies from the PACS via ``worklist_pacs``) lives in ``worklist_fill``; the
in-memory rows in ``worklist_model``; the pure HTML/table helpers in ``worklist_views``.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import gradio as gr

from spine_ui.errors import StoreError
from spine_ui.core.pipeline import AnalysisOptions
from spine_ui.services.store.reviews import iso
from spine_ui.ui.worklist_fill import (GENERIC_STOP, LIMIT_REASON, STOPPED_REASON, UNCHANGED,  # noqa: F401
                                       UPLOAD_LIMITS, WorklistIntake)
from spine_ui.ui.worklist_model import MAX_WORKLISTS, Worklist, WorklistStore  # noqa: F401
from spine_ui.ui.worklist_views import (intro_html, nav_html, placeholder_html, status_note, summary_html,  # noqa: F401
                                        table_row)
from spine_ui.services.batch import ArchiveLimits, Item, to_csv, to_json

log = logging.getLogger(__name__)

CSV_NAME = "spinexr-worklist.csv"
JSON_NAME = "spinexr-worklist.json"
TABLE_HEADERS = ["#", "Study", "Verdict", "P(abnormal)", "Lesions", "Lesion types / reason", "Review"]
TABLE_TYPES = ["number", "str", "str", "str", "str", "str", "str"]
REVIEW_CHOICES = [("Agree", "agree"), ("Disagree", "disagree"), ("No mark", "none")]
NO_WORKLIST = "This worklist is no longer held on the server (it expired or was replaced). Upload the files again."
GONE_STUDY = ("This study is no longer held in memory (the server keeps only the most recent ones). Upload it "
              "again.")

#: Outputs of the worklist handlers besides the result panel's (``app.OUTPUTS``).
WL_OUTPUTS = ("wl_id", "wl_files", "wl_table", "wl_status", "wl_progress", "wl_csv", "wl_json", "wl_stop",
              "wl_pos", "wl_nav", "wl_prev", "wl_next", "wl_review", "wl_comment", "wl_saved")


class WorklistUI:
    """Worklist handlers over a :class:`~spine_ui.ui.handlers.SpineUI` (its uploads, LRU, analyzer and views)."""

    def __init__(self, spine: Any, max_studies: int | None = None, limits: ArchiveLimits = UPLOAD_LIMITS) -> None:
        self.ui = spine
        self.analyzer = spine.analyzer
        self.max_studies = max(1, int(max_studies or self.analyzer.cache_size))
        self.limits = limits
        self.store = WorklistStore()
        self.intake = WorklistIntake(self)
        #: ``WorklistPacs`` when a PACS is configured (fill from the PACS, send results back), else None
        self.pacs: Any = None

    def output_names(self) -> tuple[str, ...]:
        """The worklist handlers' outputs besides the result panel's: ``WL_OUTPUTS`` (+ the PACS status)."""
        return WL_OUTPUTS + (("wl_pacs_status",) if self.pacs is not None else ())

    def case_extras(self, key: str | None) -> dict[str, Any]:
        """Updates for the open case beyond the shared result panel (whether it is stored in the PACS)."""
        return self.pacs.case_view(key) if self.pacs is not None else {}

    # --- batch ------------------------------------------------------------------------------------------
    def batch_options(self, always: bool) -> AnalysisOptions:
        """Triage for every study; boxes + Grad-CAM for abnormal ones (all with ``always``); LIME on opening."""
        return AnalysisOptions(detect="always" if always else "auto", gradcam=True, lime=False,
                               explain_normal=bool(always))

    def read_uploads(self, paths: Iterable[str] | None) -> list[Item]:
        """Every uploaded file read into memory (gradio's copies deleted), archives expanded, count capped."""
        return self.intake.read_uploads(paths)

    def on_upload(self, paths: list[str] | None, always: bool, progress: Any = None, user: str = "local",
                  wl_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Analyse every uploaded study into a worklist (see :meth:`WorklistIntake.fill`)."""
        yield from self.intake.fill(self.read_uploads(paths), always, progress, user, wl_id)

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
                "wl_saved": "", **self.case_extras(row.key if row.accepted else None)}
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

    def gate(self) -> float:
        return self.analyzer.bundle.manifest.triage.gate


__all__ = ["CSV_NAME", "JSON_NAME", "TABLE_HEADERS", "WL_OUTPUTS", "Worklist", "WorklistStore", "WorklistUI",
           "intro_html", "nav_html", "placeholder_html", "status_note", "summary_html", "table_row"]
