"""Saved worklists and the review API: the Worklist tab's list of the user's saved worklists (reopened from the
review database after a restart), who is signed in, and the named API endpoints scripts use to add studies to
a worklist, set a review mark and read a worklist with its marks (plus the admin's audit export).

Plain handlers over :class:`~spine_ui.ui.worklist.WorklistUI` (which owns the open worklists) and the
:class:`~spine_ui.services.store.reviews.Reviews` of its ``SpineUI``; ``app`` wires them."""
from __future__ import annotations

import html
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from spine_ui.errors import StoreError
from spine_ui.services.batch import analyze_batch, sort_key
from spine_ui.services.store.reviews import iso
from spine_ui.ui.worklist import UNCHANGED, Worklist, WorklistUI, nav_html, status_note

LOCAL = "local"
NOT_ALLOWED = "Your role does not allow this (admin only)."


def user_of(request: gr.Request | None) -> str:
    """The signed-in user (gradio auth), or "local" when sign-in is off."""
    name = getattr(request, "username", None) if request is not None else None
    return str(name) if name else LOCAL


class SavedWorklists:
    def __init__(self, wl: WorklistUI) -> None:
        self.wl = wl
        self.ui = wl.ui
        self.reviews = wl.ui.reviews

    # --- page ---------------------------------------------------------------------------------------------
    def whoami_html(self, user: str) -> str:
        role = self.ui.role(user) or "reviewer"
        who = ("Local use, sign-in off (marks are saved as <b>local</b>)" if user == LOCAL
               else f"Signed in as <b>{html.escape(user)}</b> ({html.escape(role)})")
        store = self.reviews.error
        db = (f'<span class="sx-wl-note-bad">{html.escape(store)}</span>' if store
              else f"reviews are saved to {html.escape(self.reviews.describe())}")
        return f'<div class="sx-whoami">{who} &middot; {db}</div>'

    def choices(self, user: str) -> list[tuple[str, str]]:
        out = []
        for w in self.reviews.worklists(user):
            title = f" {w.title}" if w.title else ""
            out.append((f"{w.created_at:%Y-%m-%d %H:%M} UTC{title} ({w.studies} studies)", w.id))
        return out

    def on_load(self, user: str) -> dict[str, Any]:
        """Page load: who is signed in, and the user's saved worklists."""
        return {"whoami": self.whoami_html(user), "wl_saved_list": gr.update(choices=self.choices(user), value=None)}

    def on_reopen(self, saved_id: str | None, user: str) -> Iterator[dict[str, Any]]:
        """Rebuild a saved worklist from the database: rows from the stored findings and marks. Studies whose
        pixels the server no longer holds open with their stored finding; uploading the files again (into this
        worklist) brings their images back."""
        if not saved_id:
            yield {"wl_progress": status_note("Choose a saved worklist first.", error=True)}
            return
        got = self.reviews.reopen(saved_id, user)
        if got is None:
            msg = self.reviews.error or "That worklist is no longer in the database (deleted by retention?)."
            yield {"wl_progress": status_note(msg, error=True)}
            return
        rows, stored = got
        if stored.summary.owner != user and self.ui.role(user) != "admin":
            yield {"wl_progress": status_note("That worklist belongs to another user.", error=True)}
            return
        self.reviews.audit(user, "opened", None, self.ui.info.get("version"), f"worklist {len(rows)} studies")
        wl = self.wl.store.put(Worklist(uuid.uuid4().hex, len(rows), rows=list(rows), running=False,
                                        store_id=saved_id, reopened=True))
        workdir = Path(tempfile.mkdtemp(prefix="spinexr-wl-"))
        try:
            out = {**self.wl.panel_placeholder(), "state": None, "wl_id": wl.id, "wl_pos": None,
                   "wl_nav": nav_html(None, 0, None), "wl_prev": gr.update(interactive=False),
                   "wl_next": gr.update(interactive=False), "wl_review": gr.update(value=None),
                   "wl_comment": gr.update(value=""), "wl_saved": "", **self.wl.list_view(wl, workdir)}
            out["wl_progress"] = status_note(f"Reopened a saved worklist of {len(rows)} studies. Upload its files "
                                             "again to see their images; marks are kept.")
            yield out
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    # --- API ------------------------------------------------------------------------------------------------
    def api_add(self, paths: list[str] | None, worklist_id: str | None, user: str) -> dict[str, Any]:
        """Analyse files into a saved worklist (a new one when ``worklist_id`` is empty); its studies back."""
        items = self.wl.read_uploads(paths if isinstance(paths, list) else [paths] if paths else [])
        try:
            store = self.reviews.require()
            if worklist_id:
                got = store.get_worklist(worklist_id)
                if got is None:
                    return {"error": "No such worklist."}
                start = len(got.entries)
            else:
                worklist_id, start = store.create_worklist(user, "API"), 0
        except StoreError as exc:
            return {"error": exc.user_message}
        numbered = []
        for n, row in enumerate(analyze_batch(self.wl.analyzer, items, self.wl.batch_options(False)), start + 1):
            a = self.wl.analyzer.cached(row.key) if row.key else None
            if a is not None:
                self.reviews.record_finding(a.finding(), user)
            numbered.append((n, row))
        self.reviews.save_rows(worklist_id, numbered)
        if self.reviews.error:
            return {"error": self.reviews.error, "worklist_id": worklist_id}
        return self.api_read(worklist_id, user)

    def api_mark(self, worklist_id: str | None, study: str | None, review: str | None, comment: str | None,
                 user: str) -> dict[str, Any]:
        """Set a mark on a study of a saved worklist (``study``: its content hash or its '#' position). The
        answer says ``saved: true`` only after the commit."""
        got = self.reviews.reopen(worklist_id or "", user)
        if got is None:
            return {"saved": False, "error": self.reviews.error or "No such worklist."}
        _rows, stored = got
        keys = {e.key for e in stored.entries if e.key}
        key = study if study in keys else next((e.key for e in stored.entries if str(e.position) == str(study)), None)
        if not key:
            return {"saved": False, "error": "No such study in this worklist (give its key or its # position)."}
        try:
            mark = self.reviews.set_mark(key, review, comment, user, self.ui.info.get("version", ""), worklist_id)
        except ValueError as exc:
            return {"saved": False, "error": str(exc)}
        except StoreError as exc:
            return {"saved": False, "error": exc.user_message}
        return {"saved": True, "mark": mark_dict(mark)}

    def api_read(self, worklist_id: str | None, user: str) -> dict[str, Any]:
        """A saved worklist: its studies (most suspicious first) with every reviewer's current mark; with no
        id, the user's saved worklists."""
        if not worklist_id:
            return {"worklists": [{"id": w.id, "title": w.title, "created_at": w.created_at.isoformat(),
                                   "studies": w.studies} for w in self.reviews.worklists(user)],
                    "error": self.reviews.error}
        got = self.reviews.reopen(worklist_id, user)
        if got is None:
            return {"error": self.reviews.error or "No such worklist."}
        rows, stored = got
        self.reviews.audit(user, "opened", None, self.ui.info.get("version"), "api worklist")
        studies = []
        for n, row in sorted(enumerate(rows, 1), key=lambda p: sort_key(p[1])):
            studies.append({"position": n, "key": row.key, **row.to_dict(),
                            "marks": [mark_dict(m) for m in stored.marks.get(row.key, ())]})
        return {"worklist_id": worklist_id, "owner": stored.summary.owner, "title": stored.summary.title,
                "created_at": stored.summary.created_at.isoformat(), "studies": studies}

    def api_audit(self, since: str | None, user: str) -> dict[str, Any]:
        """Admin only: audit events since an ISO date, as CSV text."""
        from spine_ui.cli.audit import parse_date, to_csv

        if self.ui.role(user) != "admin":
            self.reviews.audit(user, "refused", None, None, "audit export: not admin")
            return {"error": NOT_ALLOWED}
        try:
            when = parse_date(since) if since else None
            events = self.reviews.require().export_audit(when)
        except StoreError as exc:
            return {"error": exc.user_message}
        except Exception:
            return {"error": "since must be a date, YYYY-MM-DD"}
        self.reviews.audit(user, "exported", None, None, f"audit, {len(events)} events")
        return {"events": len(events), "csv": to_csv(events)}


def mark_dict(m) -> dict[str, Any]:
    return {"review": m.review, "comment": m.comment, "reviewer": m.reviewer, "time": iso(m),
            "bundle_version": m.bundle_version}


__all__ = ["SavedWorklists", "UNCHANGED", "user_of"]
