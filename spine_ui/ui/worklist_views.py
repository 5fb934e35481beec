"""The worklist tab's pure view helpers: table rows, summary, navigation line, notes (HTML, escaped)."""
from __future__ import annotations

import html
from typing import Any

from spine_ui.services.batch import WorklistRow, summary_counts


# --------------------------------------------------------------------------- pure view helpers
def table_row(number: int, row: WorklistRow) -> list[Any]:
    verdict = "ABNORMAL" if row.verdict == "abnormal" else row.verdict
    p = "" if row.probability is None else f"{row.probability:.3f}"
    if row.lesion_count is None:
        lesions = "-" if row.accepted else ""
    else:
        lesions = str(row.lesion_count)
    detail = ", ".join(row.lesion_types) if row.accepted else (row.reason or "")
    review = row.review or ""
    if row.comment:
        short = row.comment.replace("\n", " ")
        review = (review + ": " if review else "") + (short[:40] + ("..." if len(short) > 40 else ""))
    if review and row.reviewer:
        review += f" ({row.reviewer})"
    return [number, row.study, verdict, p, lesions, detail, review]


def summary_html(rows: list[WorklistRow], total: int, running: bool) -> str:
    c = summary_counts(rows)
    parts = [f"<b>{len(rows)}</b> of {total} studies" if running else f"<b>{len(rows)}</b> studies",
             f'<span class="sx-wl-abn">{c["abnormal"]} abnormal</span>', f'{c["normal"]} normal',
             f'{c["rejected"]} rejected', f'{c["unreadable"]} unreadable', f'{c["reviewed"]} reviewed']
    lead = "Analysing... " if running else ""
    return (f'<div class="sx-wl-summary"><div>{lead}{" &middot; ".join(parts)}</div>'
            '<div class="sx-wl-hint">Most suspicious first. Select a row to open the study; Previous / Next move '
            'through the list in this order.</div></div>')


def nav_html(pos: int | None, total: int, row: WorklistRow | None) -> str:
    if row is None or pos is None:
        return '<div class="sx-wl-nav">No study open. Select a row of the worklist.</div>'
    verdict = "ABNORMAL" if row.verdict == "abnormal" else row.verdict
    p = f" &middot; P = {row.probability:.3f}" if row.probability is not None else ""
    return (f'<div class="sx-wl-nav">Case <b>{pos + 1}</b> of {total} &middot; '
            f'<span class="sx-wl-study">{html.escape(row.study)}</span> &middot; {html.escape(verdict)}{p}</div>')


def placeholder_html() -> str:
    return ('<div class="sx-placeholder">Select a study in the worklist (or use Next) to see its full result: '
            'probability against the gate, lesion boxes, Grad-CAM and LIME.</div>')


def status_note(text: str, error: bool = False) -> str:
    return f'<div class="sx-wl-note{" sx-wl-note-bad" if error else ""}">{html.escape(text)}</div>'


def intro_html() -> str:
    return ('<div class="sx-hint">Upload several radiographs at once (DICOM, PNG, JPEG, TIFF, BMP) or a .zip of them. '
            'Each is analysed in turn and listed by P(abnormal), most suspicious first; rejected and unreadable '
            'files stay in the list with their reason. Uploads are held in memory only and deleted from disk '
            'as soon as they are read.</div>')
