"""Worklist exports: CSV and JSON with the reviewer's marks (spreadsheet-formula safe), and reading them back."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable

from spine_ui.core.finding import DISCLAIMER, UNTRAINED_WARNING
from spine_ui.services.batch.rows import COLUMNS, LESION_SEP, WorklistRow, clean_review

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # spreadsheet formula injection (and our escape char)


def _cell(text: str | None) -> str:
    """Text for a CSV cell; a leading formula character is quoted with ' (undone by read_reviews)."""
    text = "" if text is None else str(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def to_csv(rows: Iterable[WorklistRow]) -> str:
    """The worklist as CSV (header + one line per row, in the given order), columns :data:`COLUMNS`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(r.study), r.verdict, "" if r.probability is None else f"{r.probability:.6g}",
                    "" if r.gate is None else f"{r.gate:g}", "" if r.lesion_count is None else r.lesion_count,
                    _cell(LESION_SEP.join(r.lesion_types)), _cell(r.reason), r.review or "", _cell(r.comment),
                    _cell(r.reviewer), r.reviewed_at or ""])
    return buf.getvalue()


def to_json(rows: Iterable[WorklistRow], bundle: dict[str, Any] | None = None) -> str:
    """The worklist as JSON: ``studies`` (the same columns as the CSV, in order) plus the disclaimer, and the
    bundle (name, version, trained) with the untrained warning when ``bundle`` is given."""
    out: dict[str, Any] = {"disclaimer": DISCLAIMER}
    if bundle is not None:
        out["bundle"] = {k: bundle.get(k) for k in ("name", "version", "trained")}
        if not bundle.get("trained"):
            out["warning"] = UNTRAINED_WARNING
    out["columns"] = list(COLUMNS)
    out["studies"] = [r.to_dict() for r in rows]
    return json.dumps(out, indent=2, ensure_ascii=False)


def read_reviews(text: str | bytes) -> list[WorklistRow]:
    """Rows (study, verdict, numbers, review, comment) back from :func:`to_csv` or :func:`to_json` output."""
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig")
    stripped = text.lstrip("\ufeff \r\n\t")
    if stripped.startswith(("{", "[")):
        data = json.loads(stripped)
        records = data.get("studies", []) if isinstance(data, dict) else data
        return [_row_from_record(rec, csv_text=False) for rec in records]
    return [_row_from_record(rec, csv_text=True) for rec in csv.DictReader(io.StringIO(stripped))]


def _row_from_record(rec: dict[str, Any], *, csv_text: bool) -> WorklistRow:
    def text(k: str) -> str:
        v = rec.get(k)
        v = "" if v is None else str(v)
        return _uncell(v) if csv_text else v

    def num(k: str, kind=float):
        v = rec.get(k)
        return None if v in (None, "") else kind(v)

    types = rec.get("lesion_types")
    if isinstance(types, str):
        types = [t for t in _uncell(types).split(LESION_SEP) if t] if types else []
    return WorklistRow(study=text("study"), verdict=text("verdict"), probability=num("probability"),
                       gate=num("gate"), lesion_count=num("lesion_count", int), lesion_types=tuple(types or ()),
                       reason=text("reason") or None, review=clean_review(text("review")),
                       comment=text("comment"), reviewer=text("reviewer") or None,
                       reviewed_at=text("reviewed_at") or None)
