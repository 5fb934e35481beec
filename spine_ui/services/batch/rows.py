"""Worklist rows: one study's verdict, numbers and review marks (no identifiers), built from a ``Finding``;
review text cleaning, safe display names, the risk order."""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, replace
from typing import Any, Iterable

from spine_ui.core.finding import Finding

VERDICTS = ("abnormal", "normal", "rejected", "unreadable")
REVIEWS = ("agree", "disagree")
#: The columns of both exports, in order.
COLUMNS = ("study", "verdict", "probability", "gate", "lesion_count", "lesion_types", "reason", "review", "comment",
           "reviewer", "reviewed_at")
GENERIC_FAILURE = "The analysis failed unexpectedly for this file; the other studies were not affected."
MAX_COMMENT = 2000
MAX_NAME = 160
LESION_SEP = "; "


# --------------------------------------------------------------------------- rows
@dataclass
class WorklistRow:
    """One study of a worklist. ``study`` is a file name (no folders); ``key`` the content hash (not exported)."""

    study: str
    verdict: str  # one of VERDICTS
    probability: float | None = None
    gate: float | None = None
    lesion_count: int | None = None  # None: the detector did not run (e.g. below the gate)
    lesion_types: tuple[str, ...] = ()  # display names, most confident first
    reason: str | None = None  # why a study was rejected or could not be read
    review: str | None = None  # "agree", "disagree" or None
    comment: str = ""
    key: str | None = None  # sha256 of the file content; None when the content was never read
    reviewer: str | None = None  # who set the mark shown (the store's current mark)
    reviewed_at: str | None = None  # when, ISO 8601 UTC

    @property
    def accepted(self) -> bool:
        return self.verdict in ("abnormal", "normal")

    def to_dict(self) -> dict[str, Any]:
        """The exported columns (no key)."""
        return {"study": self.study, "verdict": self.verdict, "probability": self.probability, "gate": self.gate,
                "lesion_count": self.lesion_count, "lesion_types": list(self.lesion_types), "reason": self.reason,
                "review": self.review, "comment": self.comment, "reviewer": self.reviewer,
                "reviewed_at": self.reviewed_at}


def clean_review(review: str | None) -> str | None:
    review = (review or "").strip().lower() or None
    if review in (None, "none", "unmarked"):
        return None
    if review not in REVIEWS:
        raise ValueError(f"review must be one of {REVIEWS} or empty")
    return review


def clean_text(text: str | None, limit: int = MAX_COMMENT) -> str:
    """Free text, kept as typed except control characters (newlines and tabs stay), stripped, capped."""
    out = "".join(ch for ch in (text or "") if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    return out.strip()[:limit]


def clean_comment(comment: str | None) -> str:
    """A reviewer's comment: :func:`clean_text` capped at MAX_COMMENT."""
    return clean_text(comment, MAX_COMMENT)


def with_review(row: WorklistRow, review: str | None, comment: str | None, reviewer: str | None = None,
                reviewed_at: str | None = None) -> WorklistRow:
    return replace(row, review=clean_review(review), comment=clean_comment(comment), reviewer=reviewer,
                   reviewed_at=reviewed_at)


def safe_name(name: str | os.PathLike | None) -> str:
    """The file name only: no folders (either separator), no control characters, bounded length."""
    text = os.fspath(name) if name is not None else ""
    text = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"))
    text = " ".join(text.split())
    if len(text) > MAX_NAME:
        stem, dot, ext = text.rpartition(".")
        text = (stem[:MAX_NAME - len(ext) - 2] + "~." + ext) if dot and len(ext) <= 10 else text[:MAX_NAME]
    return text or "unnamed"


def row_from_finding(study: str, finding: Finding) -> WorklistRow:
    """The worklist row of an analysed study."""
    key = finding.key
    if not finding.accepted:
        return WorklistRow(safe_name(study), "rejected", gate=finding.gate,
                           reason=finding.reason or "The image was rejected.", key=key)
    if finding.verdict not in ("abnormal", "normal") or finding.probability is None:  # triage never ran
        return WorklistRow(safe_name(study), "unreadable", gate=finding.gate, reason=GENERIC_FAILURE, key=key)
    types: list[str] = []
    for les in finding.lesions:  # most confident first
        name = les.name or les.label
        if name and name not in types:
            types.append(name)
    return WorklistRow(safe_name(study), finding.verdict, probability=float(finding.probability), gate=finding.gate,
                       lesion_count=len(finding.lesions) if finding.detector_ran else None,
                       lesion_types=tuple(types), key=key)



def sort_key(row: WorklistRow) -> tuple[int, float]:
    """Analysed studies first, by probability (descending); then rejected; then unreadable."""
    if row.accepted:
        return 0, -(row.probability if row.probability is not None else -1.0)
    return (1 if row.verdict == "rejected" else 2), 0.0


def sort_rows(rows: Iterable[WorklistRow]) -> list[WorklistRow]:
    """Most suspicious first: analysed studies by probability (descending), then rejected, then unreadable;
    ties keep their input order (the sort is stable)."""
    return sorted(rows, key=sort_key)


def summary_counts(rows: Iterable[WorklistRow]) -> dict[str, int]:
    counts = {v: 0 for v in VERDICTS}
    counts["reviewed"] = 0
    for r in rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
        counts["reviewed"] += r.review is not None
    return counts
