"""Triage worklist: many studies at once, sorted by risk, reviewed case by case.

Pure Python over :class:`spine_ui.core.pipeline.Analyzer` (no gradio): the CLI (``analyze DIR --csv``) and the web
app's worklist tab share it.

* :func:`expand_inputs` turns files, folders and ``.zip`` archives into ``(name, source)`` items; archive
  members are read lazily, in memory, never extracted to disk, behind zip-bomb limits (:class:`ArchiveLimits`).
* :func:`analyze_batch` analyses the items one by one and yields one :class:`WorklistRow` per study; an
  unreadable file becomes a row with its message and never stops the batch.
* :func:`sort_rows` puts the most suspicious first; :func:`to_csv` / :func:`to_json` export the rows (with the
  reviewer's marks) and :func:`read_reviews` reads either export back.

A row names its study by the file name only (the basename, never a folder path) and carries no patient
identifiers from the file's content (no DICOM tags, no dates).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import unicodedata
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

from spine_ui.config import DecodeConfig
from spine_ui.errors import BundleError, CorruptFileError, ImageTooLargeError, InputError
from spine_ui.core.pipeline import Analysis, AnalysisOptions, Analyzer
from spine_ui.core.finding import DISCLAIMER, UNTRAINED_WARNING, Finding

log = logging.getLogger(__name__)

VERDICTS = ("abnormal", "normal", "rejected", "unreadable")
REVIEWS = ("agree", "disagree")
#: The columns of both exports, in order.
COLUMNS = ("study", "verdict", "probability", "gate", "lesion_count", "lesion_types", "reason", "review", "comment")
#: Suffixes picked up inside folders and archives (explicitly named files are always taken; the content, not
#: the name, decides the decoder). Extension-less files are taken too: DICOM exports often have none.
IMAGE_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff"})
ARCHIVE_SUFFIXES = frozenset({".zip"})
#: Never studies: DICOM media directories and OS clutter (listed as skipped); hidden folders are not searched.
SKIP_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini"})
HIDDEN_DIRS = frozenset({"__macosx"})
GENERIC_FAILURE = "The analysis failed unexpectedly for this file; the other studies were not affected."
MAX_COMMENT = 2000
MAX_NAME = 160
LESION_SEP = "; "

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_SAFE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # bounded decompression per read()
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # spreadsheet formula injection (and our escape char)


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

    @property
    def accepted(self) -> bool:
        return self.verdict in ("abnormal", "normal")

    def to_dict(self) -> dict[str, Any]:
        """The exported columns (no key)."""
        return {"study": self.study, "verdict": self.verdict, "probability": self.probability, "gate": self.gate,
                "lesion_count": self.lesion_count, "lesion_types": list(self.lesion_types), "reason": self.reason,
                "review": self.review, "comment": self.comment}


def clean_review(review: str | None) -> str | None:
    review = (review or "").strip().lower() or None
    if review in (None, "none", "unmarked"):
        return None
    if review not in REVIEWS:
        raise ValueError(f"review must be one of {REVIEWS} or empty")
    return review


def clean_comment(comment: str | None) -> str:
    """Free text, kept as typed except control characters (newlines and tabs stay), capped at MAX_COMMENT."""
    text = "".join(ch for ch in (comment or "") if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    return text.strip()[:MAX_COMMENT]


def with_review(row: WorklistRow, review: str | None, comment: str | None) -> WorklistRow:
    return replace(row, review=clean_review(review), comment=clean_comment(comment))


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


# --------------------------------------------------------------------------- inputs
#: Where a study's bytes come from: the bytes themselves, a file, a deferred reader (archive member) or the
#: reason it cannot be read at all (an archive refused as a whole, a member over the size limit).
Source = Union[bytes, bytearray, str, os.PathLike, Callable[[], bytes], InputError]
Item = tuple[str, Source]


@dataclass(frozen=True)
class ArchiveLimits:
    """Zip-bomb guards, checked from the archive's directory before any member is decompressed."""

    max_members: int = 500
    max_total_bytes: int = 2 * 1024 ** 3  # declared uncompressed size of all members together
    max_member_bytes: int = DecodeConfig().max_file_bytes


def is_hidden(rel: str | os.PathLike) -> bool:
    """A dot file or folder, or anything under ``__MACOSX`` (resource forks)."""
    parts = [p for p in os.fspath(rel).replace("\\", "/").split("/") if p]
    return any(p.startswith(".") or p.lower() in HIDDEN_DIRS for p in parts)


def wanted_member(rel: str) -> bool:
    """Inside a folder or an archive: radiograph-like names only (an image suffix, none, or a numeric one as in
    UID-named DICOM files), nothing hidden, no DICOMDIR."""
    if is_hidden(rel):
        return False
    path = PurePosixPath(rel.replace("\\", "/"))
    if path.name.lower() in SKIP_NAMES:
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix == "" or suffix.lstrip(".").isdigit()


def _natural(rel: str) -> tuple:
    """Case-insensitive order with numbers compared as numbers (IM2 before IM10)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", rel)), rel


def looks_like_zip(name: str, head: bytes = b"") -> bool:
    if PurePosixPath(name.replace("\\", "/")).suffix.lower() in ARCHIVE_SUFFIXES:
        return True
    return head[:4] in _ZIP_MAGICS and head[128:132] != b"DICM"


def expand_inputs(paths: Iterable[str | os.PathLike], *, limits: ArchiveLimits = ArchiveLimits(),
                  skipped: list[str] | None = None) -> list[Item]:
    """Files, folders (recursive, sorted, hidden entries skipped) and ``.zip`` archives -> ``(name, source)``.

    Folders and archives contribute radiograph-like names only (image suffix or none); what they hold besides
    is listed in ``skipped``. A missing path or a refused archive becomes an item whose source is the
    :class:`InputError` to report."""
    items: list[Item] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for rel in _walk(p):
                f = p / rel
                if PurePosixPath(rel).suffix.lower() in ARCHIVE_SUFFIXES:
                    items.extend(expand_archive(f.name, f, limits, skipped))
                elif wanted_member(rel):
                    items.append((safe_name(f.name), f))
                elif skipped is not None:
                    skipped.append(rel)
        elif p.is_file():
            if looks_like_zip(p.name, _head(p)):
                items.extend(expand_archive(p.name, p, limits, skipped))
            else:
                items.append((safe_name(p.name), p))
        else:
            items.append((safe_name(p.name), InputError("The file could not be opened (it does not exist or is "
                                                        "not readable).")))
    return items


def expand_upload(name: str, data: bytes, *, limits: ArchiveLimits = ArchiveLimits(),
                  skipped: list[str] | None = None) -> list[Item]:
    """One uploaded file held in memory: an archive's members, or the file itself."""
    if looks_like_zip(name, data[:132]):
        return expand_archive(name, data, limits, skipped)
    return [(safe_name(name), data)]


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root``, sorted; hidden files and folders skipped."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        for fn in filenames:
            if is_hidden(fn):
                continue
            full = Path(dirpath) / fn
            if full.is_file():
                found.append(full.relative_to(root).as_posix())
    return sorted(found, key=_natural)


def _head(p: Path) -> bytes:
    try:
        with open(p, "rb") as fh:
            return fh.read(132)
    except OSError:
        return b""


def _unsafe_member(name: str) -> bool:
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":"):  # absolute, or a Windows drive
        return True
    return ".." in n.split("/")


def _declared_entries(fh) -> int | None:
    """The entry count in the archive's end record, read before zipfile parses the central directory (so an
    archive declaring millions of members costs nothing). None when no end record is found."""
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    span = min(size, 22 + 0xFFFF)
    fh.seek(size - span)
    tail = fh.read(span)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    return int.from_bytes(tail[at + 10:at + 12], "little")  # 0xFFFF: zip64, i.e. at least 65535 entries


def _open_archive(source: bytes | Path):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")


def expand_archive(name: str, source: bytes | Path, limits: ArchiveLimits = ArchiveLimits(),
                   skipped: list[str] | None = None) -> list[Item]:
    """The members of a zip archive as deferred readers. A malformed or unsafe archive is refused as a whole
    (one item carrying the reason): more than ``max_members`` entries, members declaring more than
    ``max_total_bytes`` together, absolute or ``..`` member names. A member over ``max_member_bytes``, an
    encrypted one, one compressed with anything but deflate, or an archive inside the archive, is reported
    (not read)."""
    label = safe_name(name)
    try:
        with _open_archive(source) as fh:
            declared = _declared_entries(fh)
            if declared is not None and declared > limits.max_members:
                return [(label, _too_many(limits))]
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        log.info("Archive refused (%s).", type(exc).__name__)
        return [(label, CorruptFileError("The archive is damaged or not a zip file; it was not opened."))]
    if len(infos) > limits.max_members:
        return [(label, _too_many(limits))]
    if any(_unsafe_member(i.filename) for i in infos):
        return [(label, InputError("The archive contains unsafe member names (absolute paths or '..'); "
                                   "it was not opened."))]
    files = [i for i in infos if not i.is_dir()]
    if sum(i.file_size for i in files) > limits.max_total_bytes:
        return [(label, InputError(f"The archive would expand to more than {_size(limits.max_total_bytes)}; "
                                   "it was not opened (split it into smaller archives)."))]
    items: list[Item] = []
    for info in sorted(files, key=lambda i: _natural(i.filename)):
        rel = info.filename
        if is_hidden(rel):
            continue
        if not wanted_member(rel) and PurePosixPath(rel).suffix.lower() not in ARCHIVE_SUFFIXES:
            if skipped is not None:
                skipped.append(f"{label}:{rel}")
            continue
        member = safe_name(rel)
        if PurePosixPath(rel).suffix.lower() in ARCHIVE_SUFFIXES:
            items.append((member, InputError("Archives inside an archive are not opened; add its files directly.")))
        elif info.file_size > limits.max_member_bytes:
            items.append((member, ImageTooLargeError(f"The file is larger than the "
                                                     f"{_size(limits.max_member_bytes)} limit.")))
        elif info.flag_bits & 0x1:
            items.append((member, InputError("The archive member is encrypted; it was not opened.")))
        elif info.compress_type not in _SAFE_METHODS:
            items.append((member, InputError("The archive member uses an unsupported compression method (use "
                                             "plain zip / deflate).")))
        else:
            items.append((member, _MemberReader(source, rel, info.file_size, limits.max_member_bytes)))
    return items


def _too_many(limits: ArchiveLimits) -> InputError:
    return InputError(f"The archive holds more than {limits.max_members} files; it was not opened "
                      "(split it into smaller archives).")


def _size(n: int) -> str:
    for unit, div in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("kB", 1024)):
        if n >= div:
            return f"{n / div:g} {unit}"
    return f"{n} bytes"


class _MemberReader:
    """Reads one archive member into memory when the batch reaches it (decompressed size bounded)."""

    def __init__(self, source: bytes | Path, member: str, declared: int, limit: int) -> None:
        self.source, self.member, self.declared, self.limit = source, member, declared, limit

    def __call__(self) -> bytes:
        try:
            with _open_archive(self.source) as fh, zipfile.ZipFile(fh) as zf, zf.open(self.member) as m:
                data = m.read(min(self.declared, self.limit) + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
                KeyError) as exc:
            log.info("Archive member unreadable (%s).", type(exc).__name__)
            raise CorruptFileError("The archive member is damaged and could not be extracted.") from exc
        if len(data) > self.limit:
            raise ImageTooLargeError(f"The file is larger than the {_size(self.limit)} limit.")
        return data


def read_source(source: Source, cfg: DecodeConfig = DecodeConfig()) -> bytes:
    """The bytes of one item (at most ``cfg.max_file_bytes + 1``: the decoder then refuses larger files)."""
    if isinstance(source, InputError):
        raise source
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if callable(source):
        return source()
    try:
        with open(source, "rb") as fh:
            return fh.read(cfg.max_file_bytes + 1)
    except OSError as exc:
        raise InputError("The file could not be opened (it does not exist or is not readable).") from exc


# --------------------------------------------------------------------------- analysis
def analyze_each(analyzer: Analyzer, files: Iterable[Item], options: AnalysisOptions = AnalysisOptions(),
                 progress: Callable[[int, int | None, WorklistRow], None] | None = None
                 ) -> Iterator[tuple[WorklistRow, Analysis | None]]:
    """Like :func:`analyze_batch`, also yielding each study's :class:`Analysis` (None when unreadable)."""
    total = len(files) if isinstance(files, Sequence) else None
    gate = analyzer.bundle.manifest.triage.gate
    for done, (name, source) in enumerate(files, 1):
        study = safe_name(name)
        data: bytes | None = None
        a: Analysis | None = None
        try:
            data = read_source(source, analyzer.decode_cfg)
            a = analyzer.analyze(data, options=options)
            row = row_from_finding(study, a.finding())
        except InputError as exc:
            row = WorklistRow(study, "unreadable", gate=gate, reason=exc.user_message, key=_key(data))
            a = None
        except BundleError:
            raise  # the model bundle itself is unusable: no later study would fare better
        except Exception as exc:  # one bad study never stops the batch; log the type only (no names, no content)
            log.error("Worklist analysis of one study failed (%s).", type(exc).__name__)
            row = WorklistRow(study, "unreadable", gate=gate, reason=GENERIC_FAILURE, key=_key(data))
            a = None
        if progress is not None:
            progress(done, total, row)
        yield row, a


def analyze_batch(analyzer: Analyzer, files: Iterable[Item], options: AnalysisOptions = AnalysisOptions(),
                  progress: Callable[[int, int | None, WorklistRow], None] | None = None
                  ) -> Iterator[WorklistRow]:
    """Analyse ``(name, bytes-or-path)`` items one at a time, yielding one row per study as it is done.

    An unreadable file (:class:`InputError`) becomes an ``unreadable`` row with its message; any other failure
    is logged by type and becomes a row with a generic message; either way the batch goes on. Studies already
    analysed (same content) come from the analyzer's cache. ``progress(done, total, row)`` is called after each
    study (``total`` is None when ``files`` has no length)."""
    for row, _a in analyze_each(analyzer, files, options, progress):
        yield row


def _key(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data else None


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


# --------------------------------------------------------------------------- exports
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
                    _cell(LESION_SEP.join(r.lesion_types)), _cell(r.reason), r.review or "", _cell(r.comment)])
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
                       comment=text("comment"))


__all__ = ["ARCHIVE_SUFFIXES", "COLUMNS", "GENERIC_FAILURE", "IMAGE_SUFFIXES", "REVIEWS", "VERDICTS",
           "ArchiveLimits", "WorklistRow", "analyze_batch", "analyze_each", "clean_comment", "clean_review",
           "expand_archive", "expand_inputs", "expand_upload", "is_hidden", "looks_like_zip", "read_reviews",
           "read_source", "row_from_finding", "safe_name", "sort_key", "sort_rows", "summary_counts", "to_csv",
           "to_json", "wanted_member", "with_review"]
